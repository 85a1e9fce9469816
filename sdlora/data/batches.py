"""The order examples are seen in: a seeded permutation per epoch, cut into batches.

Position in the stream is just (epoch, batch index), so a run can be replayed exactly.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from .folder import Example
from .images import load_training_image


@dataclass
class Batch:
    pixels: "np.ndarray"  # B x 3 x H x W in [-1, 1]
    captions: list
    epoch: int


class BatchStream:
    def __init__(self, examples: list[Example], data_cfg, batch_size: int, seed: int):
        self.examples = examples
        self.data_cfg = data_cfg
        self.batch_size = batch_size
        self.seed = seed

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.examples) / self.batch_size)

    def epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.examples)))
        random.Random(f"{self.seed}-order-{epoch}").shuffle(order)
        return order

    def batch(self, index: int) -> Batch:
        """The index-th batch of the whole stream (epochs run back to back)."""
        epoch, within = divmod(index, self.batches_per_epoch)
        order = self.epoch_order(epoch)
        picked = order[within * self.batch_size : (within + 1) * self.batch_size]
        pixels, captions = [], []
        for i in picked:
            example = self.examples[i]
            rng = random.Random(f"{self.seed}-aug-{epoch}-{i}")  # per epoch and image: replayable
            pixels.append(
                load_training_image(
                    example.image_path,
                    self.data_cfg.resolution,
                    self.data_cfg.center_crop,
                    self.data_cfg.random_flip,
                    rng,
                )
            )
            captions.append(example.caption)
        return Batch(np.stack(pixels), captions, epoch)
