"""Load an image as a training tensor: RGB, short side resized, cropped, optionally flipped."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from ..errors import DataError


def open_rgb(path: Path):
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"Cannot read image {path}: {exc}. Remove or replace the file.") from None


def load_training_image(path: Path, resolution: int, center_crop: bool, flip: bool, rng: random.Random):
    """A float32 CHW array in [-1, 1] of size resolution x resolution."""
    from PIL import Image

    image = open_rgb(path)
    scale = resolution / min(image.size)
    size = (max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS)
    if center_crop:
        left, top = (image.width - resolution) // 2, (image.height - resolution) // 2
    else:
        left, top = rng.randint(0, image.width - resolution), rng.randint(0, image.height - resolution)
    image = image.crop((left, top, left + resolution, top + resolution))
    if flip and rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return array.transpose(2, 0, 1)
