"""Open any common image as 8-bit RGB (EXIF orientation, transparency, CMYK, 16-bit, grayscale),
then resize and crop it to its bucket as a training array."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0), "gray": (128, 128, 128)}
EXIF_ORIENTATION_TAG = 0x0112
ROTATING_ORIENTATIONS = (5, 6, 7, 8)  # these swap width and height


def _to_8bit(image):
    """16-bit / 32-bit integer and float grayscale -> 8-bit 'L', scaled instead of clipped."""
    from PIL import Image

    array = np.asarray(image)
    if image.mode == "F":
        top = float(array.max()) if array.size else 1.0
        scaled = array / (top if top > 1.0 else 1.0) * 255.0
    else:
        top = 65535.0 if array.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        scaled = array.astype(np.float64) * (255.0 / top)
    return Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8), mode="L")


def to_rgb(image, background: str = "white"):
    """Any PIL image as RGB; transparent pixels are composited on `background`."""
    from PIL import Image

    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        image = _to_8bit(image)
    if image.mode == "P" and "transparency" in image.info or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, BACKGROUNDS[background] + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def open_rgb(path: Path, background: str = "white"):
    """The image upright (EXIF orientation applied) as RGB, or DataError naming the file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            upright = ImageOps.exif_transpose(image)
            return to_rgb(upright, background)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"Cannot read image {path}: {exc}. Remove or replace the file.") from None


def upright_size(path: Path) -> tuple[int, int]:
    """(width, height) after EXIF orientation, read from the header without decoding pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
            orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"Cannot read image {path}: {exc}. Remove or replace the file.") from None
    return (height, width) if orientation in ROTATING_ORIENTATIONS else (width, height)


@dataclass(frozen=True)
class CropPlan:
    """Resize the upright image to `resized`, then cut the bucket out at (left, top)."""

    resized: tuple[int, int]
    left: int
    top: int
    bucket: tuple[int, int]


def plan_crop(size: tuple[int, int], bucket: tuple[int, int], center: bool, rng) -> CropPlan:
    """Scale so the image covers the bucket (aspect kept), then a center or random crop."""
    (width, height), (bucket_w, bucket_h) = size, bucket
    scale = max(bucket_w / width, bucket_h / height)
    resized = (max(bucket_w, round(width * scale)), max(bucket_h, round(height * scale)))
    spare_w, spare_h = resized[0] - bucket_w, resized[1] - bucket_h
    if center:
        return CropPlan(resized, spare_w // 2, spare_h // 2, bucket)
    return CropPlan(resized, rng.randint(0, spare_w), rng.randint(0, spare_h), bucket)


def load_training_array(path: Path, crop: CropPlan, flip: bool, background: str = "white") -> np.ndarray:
    """A float32 CHW array in [-1, 1] of the bucket's size."""
    from PIL import Image

    image = open_rgb(path, background)
    if image.size != crop.resized:
        image = image.resize(crop.resized, Image.Resampling.LANCZOS)
    width, height = crop.bucket
    image = image.crop((crop.left, crop.top, crop.left + width, crop.top + height))
    if flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return array.transpose(2, 0, 1)
