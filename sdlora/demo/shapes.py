"""Deterministic synthetic images of coloured shapes on plain backgrounds, with captions."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 210, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class ShapeScene:
    shape: str
    colour: str
    background: str
    size: float = 0.6  # fraction of the image side
    center: tuple = (0.5, 0.5)

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"


def render(scene: ShapeScene, side: int = 64):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (side, side), COLOURS[scene.background])
    draw = ImageDraw.Draw(image)
    half = scene.size * side / 2
    cx, cy = scene.center[0] * side, scene.center[1] * side
    box = (cx - half, cy - half, cx + half, cy + half)
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif scene.shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    return image


DEMO_DATASETS = {
    # A small concept set: red shapes on varied backgrounds.
    "demo-shapes": [
        ShapeScene(shape, "red", background, size, center)
        for shape, background, size, center in [
            ("circle", "white", 0.6, (0.5, 0.5)),
            ("circle", "blue", 0.5, (0.4, 0.5)),
            ("square", "white", 0.5, (0.5, 0.5)),
            ("square", "yellow", 0.6, (0.55, 0.45)),
            ("triangle", "white", 0.6, (0.5, 0.5)),
            ("triangle", "green", 0.5, (0.5, 0.55)),
            ("circle", "black", 0.4, (0.6, 0.6)),
            ("square", "blue", 0.4, (0.4, 0.4)),
        ]
    ]
}


def write_dataset(folder: Path, scenes: list[ShapeScene], side: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(scenes):
        render(scene, side).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(scene.caption + "\n", encoding="utf-8")
    return folder


def builtin_dataset_path(name: str) -> Path:
    from ..fsutil import atomic_dir
    from ..models.loading import sdlora_home

    if name not in DEMO_DATASETS:
        raise DataError(f"Unknown built-in dataset 'builtin:{name}'; built-in datasets: "
                        + ", ".join("builtin:" + n for n in DEMO_DATASETS) + ".")
    folder = sdlora_home() / "datasets" / name
    if not folder.is_dir():
        with atomic_dir(folder) as tmp:
            write_dataset(tmp, DEMO_DATASETS[name])
    return folder
