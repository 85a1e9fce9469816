"""An analytic judge of shapes-world images: which shape, which colour, on which background.

No learned parts, so it is deterministic and needs no training: the background is the median of
the image border, the foreground is every pixel far from it, colours are the nearest palette
entry, and the shape is the nearest ideal width profile (row widths of the foreground across its
bounding box: constant for a square, a half-disc arc for a circle, a ramp for a triangle).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .shapes import PALETTE, SHAPES, ShapeScene

FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that counts as foreground
MIN_FOREGROUND = 0.02  # below this fraction of the image there is no shape to judge
PROFILE_BINS = 12
_Y = (np.arange(PROFILE_BINS) + 0.5) / PROFILE_BINS
IDEAL_PROFILES = {
    "square": np.ones(PROFILE_BINS),
    "circle": 2 * np.sqrt(_Y * (1 - _Y)),
    "triangle": _Y,
}


@dataclass(frozen=True)
class Judgement:
    shape: str  # one of SHAPES, or "none" when no foreground was found
    colour: str  # nearest palette colour of the foreground ("none" without one)
    background: str
    foreground_fraction: float

    def matches(self, scene: ShapeScene, background: bool = False) -> bool:
        """Shape and colour right (and the background too when asked)."""
        ok = self.shape == scene.shape and self.colour == scene.colour
        return ok and (not background or self.background == scene.background)


def nearest_colour(rgb: np.ndarray, palette: dict = PALETTE) -> str:
    names = list(palette)
    distances = np.linalg.norm(np.array([palette[n] for n in names], dtype=np.float64) - rgb, axis=1)
    return names[int(np.argmin(distances))]


def _as_array(image) -> np.ndarray:
    array = np.asarray(image, dtype=np.float64)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {array.shape}")
    if array.max() <= 1.0 + 1e-6:  # a float image in [0, 1] (diffusers output_type='np')
        array = array * 255.0
    return array


def width_profile(mask: np.ndarray) -> np.ndarray | None:
    """Row widths of the mask across its bounding box, resampled to PROFILE_BINS and scaled by the widest."""
    rows = np.flatnonzero(mask.sum(axis=1) >= 1)
    cols = np.flatnonzero(mask.sum(axis=0) >= 1)
    if len(rows) < 3 or len(cols) < 3:
        return None
    box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float64)
    widths = box.sum(axis=1)
    positions = (np.arange(len(widths)) + 0.5) / len(widths)
    profile = np.interp(_Y, positions, widths)
    return profile / max(profile.max(), 1e-9)


def classify_shape(mask: np.ndarray) -> str:
    profile = width_profile(mask)
    if profile is None:
        return "none"
    errors = {name: float(np.mean((profile - ideal) ** 2)) for name, ideal in IDEAL_PROFILES.items()}
    return min(SHAPES, key=errors.__getitem__)


def judge(image) -> Judgement:
    """Judge one image (PIL, uint8 array or float array in [0, 1])."""
    array = _as_array(image)
    border = np.concatenate([array[:2].reshape(-1, 3), array[-2:].reshape(-1, 3),
                             array[:, :2].reshape(-1, 3), array[:, -2:].reshape(-1, 3)])
    background_rgb = np.median(border, axis=0)
    mask = np.linalg.norm(array - background_rgb, axis=2) > FOREGROUND_DISTANCE
    fraction = float(mask.mean())
    background = nearest_colour(background_rgb)
    if fraction < MIN_FOREGROUND:
        return Judgement("none", "none", background, fraction)
    colour = nearest_colour(np.median(array[mask], axis=0))
    return Judgement(classify_shape(mask), colour, background, fraction)


def accuracy(images, scenes, background: bool = False) -> float:
    """Fraction of images whose judged shape and colour (and background) match their scenes."""
    hits = [judge(image).matches(scene, background) for image, scene in zip(images, scenes, strict=True)]
    return sum(hits) / max(len(hits), 1)
