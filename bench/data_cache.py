"""Benchmark: one epoch of tiny-model training with latent + text caches off vs on.

Generates photo-sized JPEGs (default 16 camera-like 2048x1536 images, 3 megapixels; phones make
12), captions with shuffled tags, trains
the built-in tiny SD1.5 model for 4 epochs in each mode, and times epochs from the trainer's own
step events. Epoch 1 of the cached run fills the caches; each figure is the fastest of epochs
2-4 (the least disturbed by other load on the machine), and all epoch times are printed.

    PYTHONPATH=. python bench/data_cache.py [--images 16] [--side 2048] [--resolution 64]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

EPOCHS = 4


def make_images(folder: Path, count: int, side: int) -> None:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        height = side * 3 // 4
        pixels = rng.integers(0, 256, (height // 16, side // 16, 3), dtype=np.uint8)
        photo = Image.fromarray(pixels).resize((side, height), Image.Resampling.BICUBIC)
        photo.save(folder / f"{i:03d}.jpg", quality=92)
        (folder / f"{i:03d}.txt").write_text(f"sks, photo {i % 3}, red, outdoors, day")


def train_epochs(data: Path, out: Path, cached: bool, args) -> list[float]:
    from sdlora.config import from_dict
    from sdlora.train.run import run_training

    steps_per_epoch = -(-args.images // args.batch_size)
    cfg = from_dict({
        "model": {"path": "builtin:tiny-sd15"},
        "data": {"path": str(data), "resolution": args.resolution, "latents": "deterministic",
                 "shuffle_tags": True, "keep_tokens": 1,
                 "cache_latents": "memory" if cached else "off", "cache_text_embeddings": cached},
        "lora": {"rank": 4, "alpha": 4.0},
        "optim": {"optimizer": "adamw", "learning_rate": 1e-3},
        "train": {"max_steps": EPOCHS * steps_per_epoch, "batch_size": args.batch_size, "seed": 1, "device": "cpu"},
    })
    events = []
    run_training(cfg, out, progress=False, extra_sink=events.append)
    started = next(e for e in events if e.type == "started")
    marks = [started.time] + [e.time for e in events if e.type == "step"]
    ends = [marks[steps_per_epoch * k] for k in range(EPOCHS + 1)]
    return [b - a for a, b in zip(ends, ends[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--side", type=int, default=2048, help="photo width; height is 3/4 of it")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.setdefault("SDLORA_HOME", str(root / "home"))
        make_images(root / "data", args.images, args.side)
        plain = train_epochs(root / "data", root / "plain", False, args)
        cached = train_epochs(root / "data", root / "cached", True, args)
    print(f"{args.images} images {args.side}x{args.side * 3 // 4} -> {args.resolution}px, batch {args.batch_size}, tiny SD1.5, CPU")
    print("epoch seconds uncached: " + ", ".join(f"{t:.2f}" for t in plain))
    print("epoch seconds cached:   " + ", ".join(f"{t:.2f}" for t in cached) + "  (epoch 1 fills the caches)")
    uncached_epoch, cached_epoch = min(plain[1:]), min(cached[1:])
    print(f"uncached epoch: {uncached_epoch:.2f} s")
    print(f"cached epoch:   {cached_epoch:.2f} s")
    print(f"ratio: {uncached_epoch / cached_epoch:.2f}x")


if __name__ == "__main__":
    started = time.time()
    main()
    print(f"(benchmark took {time.time() - started:.0f} s)")
