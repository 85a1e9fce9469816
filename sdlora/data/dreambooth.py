"""DreamBooth prior preservation on the data side: the class-image set and pairing it with batches.

Each instance batch gets as many class images, cut to the instance batch's bucket, appended after
it; the trainer splits the per-example losses at that point. Which class image fills which place
is a pure function of (micro-batch index, place), like the rest of the stream.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .images import plan_crop, upright_size
from .scan import IMAGE_EXTENSIONS, DatasetSpec, ImageRecord, file_hash
from .stream import Batch, BatchItem, Example


def effective_data_config(cfg):
    """[data] as training sees it: in DreamBooth mode, images without a caption get the instance prompt."""
    import dataclasses

    db = cfg.dreambooth
    if db.enabled and cfg.data.missing_caption == "error":
        return dataclasses.replace(cfg.data, missing_caption="default", default_caption=db.instance_prompt)
    return cfg.data


@dataclass(frozen=True)
class ClassImage:
    record: ImageRecord
    size: tuple[int, int]
    content_hash: str


def class_images_in(folder: Path, class_prompt: str, limit: int, resolution: int) -> list[ClassImage]:
    """Up to `limit` images of `folder` (sorted by name), captioned by their .txt or the class prompt."""
    spec = DatasetSpec(-1, folder, 1, ".txt", "", resolution, "default", class_prompt)
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)[:limit]
    images = []
    for path in paths:
        side = path.with_suffix(".txt")
        caption = side.read_text(encoding="utf-8").strip() if side.is_file() else class_prompt
        if not caption:
            raise DataError(f"Class image {path} has no caption: add {side.name} or set dreambooth.class_prompt.")
        record = ImageRecord(path, caption, "file" if side.is_file() else "default", 1, spec)
        images.append(ClassImage(record, upright_size(path), file_hash(path)))
    return images


class PriorPairing:
    """Appends class images to instance batches (prior preservation)."""

    def __init__(self, class_images: list[ClassImage], batch_size: int, seed: int):
        if not class_images:
            raise DataError("Prior preservation has no class images to train on.")
        self.class_images = class_images
        self.batch_size = batch_size
        self.seed = seed

    def class_image_at(self, position: int) -> ClassImage:
        cycle, index = divmod(position, len(self.class_images))
        order = list(range(len(self.class_images)))
        random.Random(f"{self.seed}-class-{cycle}").shuffle(order)
        return self.class_images[order[index]]

    def paired(self, batch: Batch, micro_batch: int) -> Batch:
        """The instance batch followed by one class image per instance image, in the same bucket."""
        extra = []
        for place in range(len(batch.items)):
            image = self.class_image_at(micro_batch * self.batch_size + place)
            example = Example(image.record, image.size, batch.bucket, image.content_hash)
            crop = plan_crop(image.size, batch.bucket, center=True, rng=None)
            extra.append(BatchItem(example, -1, crop, False, image.record.caption))
        return Batch(batch.items + extra, batch.epoch, batch.bucket, batch.background)
