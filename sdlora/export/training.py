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


def tag_frequency(examples) -> dict:
    """{dataset folder: {tag: count}} from the raw comma-separated captions (A1111's "training tags")."""
    counts: dict = collections.defaultdict(collections.Counter)
    for example in examples:
        record = example.record
        counts[record.dataset.folder.name].update(
            tag.strip() for tag in (record.caption or "").split(",") if tag.strip()
        )
    return {folder: dict(tags) for folder, tags in counts.items()}


def dataset_dirs(examples) -> dict:
    """{dataset folder: {n_repeats, img_count}} as kohya writes ss_dataset_dirs."""
    dirs: dict = {}
    for example in examples:
        record = example.record
        entry = dirs.setdefault(record.path.parent.name, {"n_repeats": record.repeats, "img_count": 0})
        entry["img_count"] += 1
    return dirs


def training_info(cfg, step: int, epoch: int, started_at: float, examples=()) -> TrainingInfo:
    return TrainingInfo(
        output_name=cfg.save.output_name,
        base_model_name=cfg.model.path,
        resolution=cfg.data.resolution,
        steps=step,
        epoch=epoch,
        started_at=started_at,
        tag_frequency=tag_frequency(examples),
        dataset_dirs=dataset_dirs(examples),
        num_images=len(examples),
        trigger_words=list(cfg.save.trigger_words),
        clip_skip=cfg.model.clip_skip if cfg.model.clip_skip > 1 else None,
    )


def save_checked_lora(base, path: Path, cfg, info: TrainingInfo):
    """Write the LoRA of `base` (unet / text_encoder with PEFT layers) and prove it loads.
    A failed check raises LoraFileError with the report: a file that silently does nothing in
    A1111 is worse than a stopped run (the file stays on disk for inspection)."""
    components = {"unet": base.unet, "text_encoder": base.text_encoder}
    if getattr(base, "text_encoder_2", None) is not None:  # SDXL
        components["text_encoder_2"] = base.text_encoder_2
    adapter = adapter_from_models(base.family, **components)
    adapter.metadata = build_metadata(adapter, info)
    shape = shape_of_models(base.family, **components)
    write_lora_file(adapter, path, cfg.save.format, cfg.save.dtype, shape)
    report = check_lora_file(path, shape)
    if not report.ok:
        raise LoraFileError("the saved LoRA failed the compatibility check:\n" + report.text())
    return report
