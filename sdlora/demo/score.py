"""An analytic judge of shapes-world images: which shape, which colour, on which background.

No learned parts, so it is deterministic and needs no training: the background is the median of
the image border, the foreground is every pixel far from it, colours are the nearest palette
entry, and the shape (world shapes and the concept's cross) is the one whose ideal form (drawn by the renderer with the foreground's area
and centroid) overlaps the foreground best. Overlap rather than outline features, so the blur
of a VAE or a diffusion model does not turn squares into circles.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .shapes import ALL_SHAPES, PALETTE, ShapeScene, render

FOREGROUND_DISTANCE = 60.0  # RGB distance from the background that counts as foreground
MIN_FOREGROUND = 0.02  # below this fraction of the image there is no shape to judge
@dataclass(frozen=True)
class Judgement:
    shape: str  # one of ALL_SHAPES, or "none" when no foreground was found
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


def template(shape: str, mask: np.ndarray) -> np.ndarray:
    """The ideal `shape` with the mask's area and centroid, drawn by the renderer itself."""
    side = mask.shape[0]
    ys, xs = np.nonzero(mask)
    area, cx, cy = float(len(xs)), (xs.mean() + 0.5) / side, (ys.mean() + 0.5) / side
    side_of = {"square": np.sqrt(area), "circle": np.sqrt(4 * area / np.pi), "triangle": np.sqrt(2 * area),
               "cross": np.sqrt(9 * area / 5)}
    half = side_of[shape] / 2
    if shape == "triangle":  # its centroid sits a third of the half-height below the box centre
        cy -= half / 3 / side
    scene = ShapeScene(shape, "white", "black", size=2 * half / side, center=(cx, cy))
    return np.asarray(render(scene, side))[..., 0] > 127


def classify_shape(mask: np.ndarray) -> str:
    """The shape whose same-area, same-centroid template overlaps the mask best (intersection over union)."""
    if mask.sum() < 9:
        return "none"

    def overlap(shape: str) -> float:
        ideal = template(shape, mask)
        return (ideal & mask).sum() / max((ideal | mask).sum(), 1)

    return max(ALL_SHAPES, key=overlap)


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
