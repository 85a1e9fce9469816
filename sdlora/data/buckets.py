"""Aspect-ratio buckets: sizes in `step` multiples with area <= base^2; each image goes to the
bucket closest to its aspect ratio, so wide and tall images are not cut down to a square."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True)
class BucketSpec:
    base: int  # base resolution: every bucket has area <= base^2
    min_side: int
    max_side: int
    step: int
    no_upscale: bool
    enabled: bool


def bucket_spec(data_cfg, base: int) -> BucketSpec:
    """The bucket settings of one dataset (its own base resolution, the shared [data] options)."""
    step = data_cfg.bucket_step
    min_side = data_cfg.min_bucket_side or max(step, math.ceil(base / 2 / step) * step)
    max_side = data_cfg.max_bucket_side or base * 2
    return BucketSpec(base, min_side, max_side, step, data_cfg.no_upscale, data_cfg.enable_buckets)


def make_buckets(spec: BucketSpec) -> list[tuple[int, int]]:
    """Every (width, height), both multiples of step within [min_side, max_side], with the largest
    height for each width such that width x height <= base^2; mirrored, sorted."""
    if not spec.enabled:
        return [(spec.base, spec.base)]
    area = spec.base * spec.base
    found = set()
    for width in range(spec.min_side, spec.max_side + 1, spec.step):
        height = min(spec.max_side, area // width // spec.step * spec.step)
        if height >= spec.min_side:
            found.update({(width, height), (height, width)})
    if not found:  # min_side too large for the base area: fall back to the square
        found.add((spec.base, spec.base))
    return sorted(found)


def bucket_for(size: tuple[int, int], spec: BucketSpec, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket of an image of `size` (upright width, height)."""
    if not spec.enabled:
        return (spec.base, spec.base)
    width, height = size
    if spec.no_upscale and width * height <= spec.base * spec.base:
        return own_size_bucket(size, spec.step)
    aspect = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1], b))


def own_size_bucket(size: tuple[int, int], step: int) -> tuple[int, int]:
    """No upscaling: the image's own size rounded down to step (at least one step)."""
    return (max(step, size[0] // step * step), max(step, size[1] // step * step))


def histogram(buckets_of_images: list[tuple[int, int]]) -> list[tuple[tuple[int, int], int]]:
    """[(bucket, count)], sorted by bucket."""
    return sorted(Counter(buckets_of_images).items())


def format_histogram(rows: list[tuple[tuple[int, int], int]], width: int = 30) -> list[str]:
    if not rows:
        return []
    most = max(count for _, count in rows)
    return [f"{w:>5}x{h:<5} {count:>6}  " + "#" * max(1, round(width * count / most)) for (w, h), count in rows]
