"""The trainer's save: the live LoRA -> Adapter with metadata -> file in save.format -> check."""
from __future__ import annotations

import collections
from pathlib import Path

from ..errors import LoraFileError
from .adapter import adapter_from_models
from .check import check_lora_file
from .io import write_lora_file
from .metadata import TrainingInfo, build_metadata
from .shapes import shape_of_models


def tag_frequency(examples, folder_name: str) -> dict:
    """{dataset folder: {tag: count}} from comma-separated captions (A1111's "training tags")."""
    counts = collections.Counter(
        tag.strip() for example in examples for tag in _raw_caption(example).split(",") if tag.strip()
    )
    return {folder_name: dict(counts)}


def _raw_caption(example) -> str:
    """The caption before shuffle/dropout: stream Examples keep it on their ImageRecord."""
    record = getattr(example, "record", example)
    return getattr(record, "caption", None) or ""


def training_info(cfg, step: int, epoch: int, started_at: float, examples=()) -> TrainingInfo:
    folder = Path(cfg.data.path).name or cfg.data.path
    return TrainingInfo(
        output_name=cfg.save.output_name,
        base_model_name=cfg.model.path,
        resolution=cfg.data.resolution,
        steps=step,
        epoch=epoch,
        started_at=started_at,
        tag_frequency=tag_frequency(examples, folder),
        dataset_dirs={folder: {"n_repeats": 1, "img_count": len(examples)}},
        num_images=len(examples),
        trigger_words=list(cfg.save.trigger_words),
    )


def save_checked_lora(base, path: Path, cfg, info: TrainingInfo):
    """Write the LoRA of `base` (unet / text_encoder with PEFT layers) and prove it loads.
    A failed check raises LoraFileError with the report: a file that silently does nothing in
    A1111 is worse than a stopped run (the file stays on disk for inspection)."""
    components = {"unet": base.unet, "text_encoder": base.text_encoder}
    adapter = adapter_from_models(base.family, **components)
    adapter.metadata = build_metadata(adapter, info)
    shape = shape_of_models(base.family, **components)
    write_lora_file(adapter, path, cfg.save.format, cfg.save.dtype, shape)
    report = check_lora_file(path, shape)
    if not report.ok:
        raise LoraFileError("the saved LoRA failed the compatibility check:\n" + report.text())
    return report
