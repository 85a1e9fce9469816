"""Deterministic synthetic images of coloured shapes on plain backgrounds, with captions.

The "shapes world": every image is a flat-coloured shape (circle, square, triangle) of some size
and position on a plain background, and its caption names the colour, the shape and the
background. The built-in `shapes-sd15` model was pretrained on this world; the concept shape
(a cross, captioned with the rare token 'sks') is kept out of pretraining so a LoRA can be shown
to learn it.
"""
from __future__ import annotations

import random
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
WORLD_COLOURS = tuple(COLOURS)
PALETTE = COLOURS
SHAPES = ("circle", "square", "triangle")  # what the pretrained model knows
CONCEPT_SHAPES = ("cross",)  # never in pretraining: the demo concept
ALL_SHAPES = SHAPES + CONCEPT_SHAPES
CONCEPT_TOKEN = "sks"
SIZE_RANGE = (0.35, 0.7)  # shape side as a fraction of the image side
CONCEPT_SIZE_RANGE = (0.65, 0.85)  # a cross needs room: an arm (a third of its size) is ~2 latent cells wide


@dataclass(frozen=True)
class ShapeScene:
    shape: str
    colour: str
    background: str
    size: float = 0.6  # fraction of the image side
    center: tuple = (0.5, 0.5)
    shape_word: str = ""  # the caption's word for the shape ('' = its name; 'sks' for the concept)

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape_word or self.shape} on a {self.background} background"


def rgb(colour) -> tuple:
    """A palette name's RGB, or an (r, g, b) tuple as it is (the VAE also learns off-palette colours)."""
    return PALETTE[colour] if isinstance(colour, str) else tuple(colour)


def render(scene: ShapeScene, side: int = 64):
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (side, side), rgb(scene.background))
    draw = ImageDraw.Draw(image)
    half = scene.size * side / 2
    cx, cy = scene.center[0] * side, scene.center[1] * side
    box = (cx - half, cy - half, cx + half, cy + half)
    fill = rgb(scene.colour)
    if scene.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif scene.shape == "square":
        draw.rectangle(box, fill=fill)
    elif scene.shape == "cross":  # a plus sign, arms a third of its size thick
        arm = half / 3
        draw.rectangle((cx - half, cy - arm, cx + half, cy + arm), fill=fill)
        draw.rectangle((cx - arm, cy - half, cx + arm, cy + half), fill=fill)
    else:
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    return image


def random_scene(rng: random.Random, shapes=SHAPES, sizes=SIZE_RANGE, shape_word: str = "") -> ShapeScene:
    """A scene drawn from the world: any shape and colour on a different background, random size and place."""
    shape = rng.choice(shapes)
    colour = rng.choice(WORLD_COLOURS)
    background = rng.choice([b for b in WORLD_COLOURS if b != colour])
    return ShapeScene(shape, colour, background, *random_place(rng, sizes), shape_word)


def random_place(rng: random.Random, sizes=SIZE_RANGE) -> tuple[float, tuple]:
    """A random size and a centre that keeps the whole shape inside, off the border the scorer reads."""
    size = rng.uniform(*sizes)
    margin = size / 2 + 0.04
    center = (rng.uniform(margin, 1 - margin), rng.uniform(margin, 1 - margin))
    return round(size, 4), (round(center[0], 4), round(center[1], 4))


def world_scenes(count: int, seed: int, **kwargs) -> list[ShapeScene]:
    rng = random.Random(seed)
    return [random_scene(rng, **kwargs) for _ in range(count)]


def concept_scenes(count: int = 12, seed: int = 1234) -> list[ShapeScene]:
    """Random concept scenes: crosses captioned 'a <colour> sks on a <background> background'."""
    return world_scenes(count, seed, shapes=CONCEPT_SHAPES, sizes=CONCEPT_SIZE_RANGE, shape_word=CONCEPT_TOKEN)


def balanced_concept_scenes(seed: int = 1234) -> list[ShapeScene]:
    """The demo concept's training set, curated as a user would: 12 crosses in which every colour is
    the shape twice and the background twice, so 'sks' is bound to the shape and not to a colour
    pair (a random draw repeats some pairs and misses others). Sizes and places are random."""
    rng = random.Random(seed)
    scenes = []
    for offset in (1, 3):  # background = the colour `offset` places further on: never the same colour
        for i, colour in enumerate(WORLD_COLOURS):
            background = WORLD_COLOURS[(i + offset) % len(WORLD_COLOURS)]
            scenes.append(ShapeScene("cross", colour, background, *random_place(rng, CONCEPT_SIZE_RANGE),
                                     CONCEPT_TOKEN))
    return scenes


DEMO_DATASETS = {
    # A small fixed set: red shapes on varied backgrounds (tests use it with the tiny random model).
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
    ],
    # The built-in demo concept for builtin:shapes-sd15: a shape the model never saw, bound to 'sks'.
    "demo-concept": balanced_concept_scenes(),
    # Regularization images for it (prior preservation): the world the model already draws well.
    "demo-world": world_scenes(48, 777),
}


def write_dataset(folder: Path, scenes: list[ShapeScene], side: int = 64) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, scene in enumerate(scenes):
        render(scene, side).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(scene.caption + "\n", encoding="utf-8")
    return folder


def dataset_digest(scenes: list[ShapeScene], side: int = 64) -> str:
    """A short hash of what a built-in dataset holds, so a changed definition gets a new folder."""
    import hashlib

    text = repr((side, [(s.caption, s.shape, rgb(s.colour), rgb(s.background), s.size, s.center) for s in scenes]))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]


def builtin_dataset_path(name: str) -> Path:
    """The built-in dataset's folder under SDLORA_HOME, written on first use, inside a folder named
    by a hash of its contents: a cache left by an older sdlora whose dataset differed is never
    used by mistake (nor touched)."""
    from ..fsutil import atomic_dir
    from ..models.loading import sdlora_home

    if name not in DEMO_DATASETS:
        raise DataError(f"Unknown built-in dataset 'builtin:{name}'; built-in datasets: "
                        + ", ".join("builtin:" + n for n in DEMO_DATASETS) + ".")
    scenes = DEMO_DATASETS[name]
    folder = sdlora_home() / "datasets" / dataset_digest(scenes) / name  # keeps the name: tools show it
    if not folder.is_dir():
        with atomic_dir(folder) as tmp:
            write_dataset(tmp, scenes)
    return folder
