"""The batch stream: images x repeats per epoch, grouped by bucket, in a seeded order.

A position in the stream is just (epoch, batch index). Every random choice (order, crop, flip,
caption shuffle/dropout) is drawn from RNGs seeded by (seed, epoch, slot), so any batch can be
rebuilt on its own: exact replay and resume need nothing but the index.
"""
from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .buckets import bucket_for, bucket_spec, make_buckets
from .captions import CaptionOptions, process_caption
from .images import CropPlan, load_training_array, plan_crop, upright_size
from .scan import ImageRecord, file_hash


@dataclass(frozen=True)
class Example:
    """An image placed for training: its record, upright size, bucket and content hash."""

    record: ImageRecord
    size: tuple[int, int]
    bucket: tuple[int, int]
    content_hash: str

    @property
    def path(self) -> Path:
        return self.record.path


def build_examples(records: list[ImageRecord], data_cfg) -> list[Example]:
    """Read each image's header and hash; assign its bucket (per dataset base resolution)."""
    examples = []
    buckets_by_base: dict = {}
    for record in records:
        spec = bucket_spec(data_cfg, record.dataset.resolution)
        if spec not in buckets_by_base:
            buckets_by_base[spec] = make_buckets(spec)
        size = upright_size(record.path)
        examples.append(Example(record, size, bucket_for(size, spec, buckets_by_base[spec]), file_hash(record.path)))
    return examples


@dataclass(frozen=True)
class BatchItem:
    """One example as drawn at one stream position: the exact crop, flip and caption."""

    example: Example
    slot: int  # position in the epoch's image x repeats list
    crop: CropPlan
    flip: bool
    caption: str


@dataclass
class Batch:
    items: list
    epoch: int
    bucket: tuple[int, int]
    background: str = "white"

    @property
    def captions(self) -> list[str]:
        return [item.caption for item in self.items]

    def subset(self, indices: list[int]) -> "Batch":
        return Batch([self.items[i] for i in indices], self.epoch, self.bucket, self.background)

    @property
    def pixels(self) -> np.ndarray:
        """B x 3 x H x W float32 in [-1, 1], loaded from the files on each access."""
        arrays = [load_training_array(i.example.path, i.crop, i.flip, self.background) for i in self.items]
        return np.stack(arrays)


class BatchStream:
    def __init__(self, examples: list[Example], data_cfg, batch_size: int, seed: int):
        self.examples = examples
        self.data_cfg = data_cfg
        self.batch_size = batch_size
        self.seed = seed
        self.caption_options = CaptionOptions.from_config(data_cfg)
        # Slot -> example: each image repeated `repeats` times, in a fixed order.
        self.slots = [i for i, e in enumerate(examples) for _ in range(e.record.repeats)]
        self.slots_by_bucket: dict = defaultdict(list)
        for slot, index in enumerate(self.slots):
            self.slots_by_bucket[examples[index].bucket].append(slot)
        self._cached_epoch: tuple[int, list] | None = None

    @property
    def samples_per_epoch(self) -> int:
        return len(self.slots)

    @property
    def batches_per_epoch(self) -> int:
        return sum(math.ceil(len(s) / self.batch_size) for s in self.slots_by_bucket.values())

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's batches as lists of slots; a batch never mixes buckets."""
        if self._cached_epoch and self._cached_epoch[0] == epoch:
            return self._cached_epoch[1]
        batches = []
        for bucket in sorted(self.slots_by_bucket):
            slots = list(self.slots_by_bucket[bucket])
            random.Random(f"{self.seed}-order-{epoch}-{bucket}").shuffle(slots)
            batches += [slots[i : i + self.batch_size] for i in range(0, len(slots), self.batch_size)]
        random.Random(f"{self.seed}-batches-{epoch}").shuffle(batches)
        self._cached_epoch = (epoch, batches)
        return batches

    def draw(self, epoch: int, slot: int) -> BatchItem:
        """The example in `slot` as seen in `epoch`: crop, flip and caption from its own RNG."""
        example = self.examples[self.slots[slot]]
        rng = random.Random(f"{self.seed}-aug-{epoch}-{slot}")
        crop = plan_crop(example.size, example.bucket, self.data_cfg.center_crop, rng)
        flip = self.data_cfg.random_flip and rng.random() < 0.5
        record = example.record
        caption = process_caption(record.caption or "", record.trigger_word, self.caption_options, rng)
        return BatchItem(example, slot, crop, flip, caption)

    def batch(self, index: int) -> Batch:
        """The index-th batch of the whole stream (epochs run back to back)."""
        epoch, within = divmod(index, self.batches_per_epoch)
        slots = self.epoch_batches(epoch)[within]
        items = [self.draw(epoch, slot) for slot in slots]
        return Batch(items, epoch, items[0].example.bucket, self.data_cfg.background)

    def bucket_histogram(self) -> list[tuple[tuple[int, int], int]]:
        """[(bucket, images)] over distinct images (repeats not counted), sorted by bucket."""
        from .buckets import histogram

        return histogram([e.bucket for e in self.examples])
