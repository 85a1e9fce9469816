"""Generated images and configs for the data tests (imported by tests/test_data_*.py)."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from sdlora.config import from_dict


def solid(size, colour=(200, 30, 30), mode="RGB"):
    return Image.new(mode, size, colour)


def gradient(size, seed=0):
    """A deterministic non-flat RGB image (so flips and crops change pixels)."""
    import numpy as np

    width, height = size
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    base = np.concatenate([x + 0 * y, y + 0 * x, (x + y + seed * 37) % 256], axis=2)
    return Image.fromarray(base.astype("uint8"), "RGB")


def write_image(folder: Path, name: str, image=None, caption: str | None = None, ext=".txt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    (image if image is not None else gradient((64, 64))).save(path)
    if caption is not None:
        path.with_suffix(ext).write_text(caption, encoding="utf-8")
    return path


def config(data: dict, **sections):
    """A validated TrainConfig with the given [data] table and other sections."""
    return from_dict({"data": data, **sections})
