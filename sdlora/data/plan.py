"""The dry-run plan: what a config will do, computed before any model compute.

images x repeats x epochs -> steps, bucket histogram, caption coverage, top tags, the LR curve and
a rough peak-memory estimate. The CLI prints `format_plan(...)`; the UI shows the same dict.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from ..errors import DataError, ModelError
from .buckets import format_histogram
from .captions import tag_frequencies, with_trigger_word
from .scan import dataset_specs, scan_all
from .stream import BatchStream, build_examples

LR_POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass
class DataPlan:
    datasets: list  # [{folder, images, samples_per_epoch}]
    num_images: int
    unreadable_images: int
    samples_per_epoch: int  # images x repeats
    batch_size: int
    gradient_accumulation: int
    batches_per_epoch: int
    steps_per_epoch: float
    epochs: int
    total_steps: int
    buckets: list  # [[width, height, images]]
    caption_sources: dict  # 'file' / 'default' / 'filename' / 'empty' / 'missing' -> images
    top_tags: list  # [[tag, images]]
    lr_curve: list = field(default_factory=list)  # [[step, lr]]
    memory: dict | None = None
    memory_note: str = ""
    class_images: dict | None = None  # DreamBooth: folder, found, to_generate

    def to_dict(self) -> dict:
        return asdict(self)


def readable_examples(records, data_cfg):
    """Examples for the records whose header can be read; the number skipped (lint says why)."""
    examples, skipped = [], 0
    for record in records:
        try:
            examples += build_examples([record], data_cfg)
        except DataError:
            skipped += 1
    return examples, skipped


def lr_curve(cfg, total_steps: int) -> list[list]:
    """The schedule the trainer will use, sampled at 0, 25, 50, 75 and 100 % of the steps."""
    import torch

    from ..train.optim import build_lr_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optim.learning_rate)
    scheduler = build_lr_scheduler(optimizer, cfg.optim, total_steps)
    wanted = sorted({min(total_steps - 1, round(p * (total_steps - 1))) for p in LR_POINTS}
                    | ({cfg.optim.lr_warmup_steps} if 0 < cfg.optim.lr_warmup_steps < total_steps else set()))
    curve = []
    for step in range(total_steps):
        if step in wanted:
            curve.append([step, scheduler.get_last_lr()[0]])
        optimizer.step()
        scheduler.step()
    return curve


def memory_for(cfg, buckets: list) -> tuple[dict | None, str]:
    """The peak-memory breakdown for the largest bucket, the device's target and, when it does not
    fit, settings that would (train.memory = 'auto': what it will choose)."""
    from ..train.memory_auto import plan_memory, report_lines

    if not buckets:
        return None, "no images"
    largest = max(((w, h) for w, h, _ in buckets), key=lambda b: b[0] * b[1])
    try:
        choice, device = plan_memory(cfg, largest)
    except (ModelError, OSError, KeyError, ValueError) as exc:
        return None, f"memory estimate unavailable: {exc}"
    memory = choice.after.to_dict() | {"target": choice.target, "target_source": choice.target_source,
                                        "fits": choice.fits, "auto_changes": choice.changes}
    return memory, "\n".join(report_lines(choice, cfg, largest, device))


def make_plan(cfg, with_lr: bool = True, with_memory: bool = True) -> DataPlan:
    import dataclasses

    from ..train.setup import plan_steps
    from .dreambooth import effective_data_config

    cfg = dataclasses.replace(cfg, data=effective_data_config(cfg))
    records = scan_all(cfg.data)
    examples, skipped = readable_examples(records, cfg.data)
    if not examples:
        folders = ", ".join(str(spec.folder) for spec in dataset_specs(cfg.data))
        raise DataError(f"No usable images in {folders} ({skipped} unreadable); run `sdlora lint` for details.")
    stream = BatchStream(examples, cfg.data, cfg.train.batch_size, cfg.train.seed)
    steps = plan_steps(len(examples), cfg.train, stream.batches_per_epoch)
    per_dataset = [
        {"folder": str(spec.folder), "images": sum(e.record.dataset.index == spec.index for e in examples),
         "samples_per_epoch": sum(e.record.repeats for e in examples if e.record.dataset.index == spec.index)}
        for spec in dataset_specs(cfg.data)
    ]
    captions = [with_trigger_word(r.caption or "", r.trigger_word) for r in records if r.caption is not None]
    plan = DataPlan(
        per_dataset, len(examples), skipped, stream.samples_per_epoch, cfg.train.batch_size,
        cfg.train.gradient_accumulation, stream.batches_per_epoch, steps.steps_per_epoch, steps.epochs,
        steps.total_steps, [[w, h, n] for (w, h), n in stream.bucket_histogram()],
        dict(sorted(Counter(r.caption_source for r in records).items())),
        [[tag, n] for tag, n in tag_frequencies(captions)],
    )
    if with_lr and steps.total_steps > 0:
        plan.lr_curve = lr_curve(cfg, steps.total_steps)
    if with_memory:
        plan.memory, plan.memory_note = memory_for(cfg, plan.buckets)
    plan.class_images = class_image_plan(cfg)
    return plan


def class_image_plan(cfg) -> dict | None:
    """Where DreamBooth class images come from and how many must still be generated."""
    db = cfg.dreambooth
    if not (db.enabled and db.prior_preservation):
        return None
    from ..train.class_images import (
        existing_images,
        generated_folder,
        given_class_folder,
    )

    if db.class_data_dir:
        folder = given_class_folder(db.class_data_dir)
        found = len(existing_images(folder))
        return {"folder": str(folder), "found": found, "to_generate": 0, "given": True}
    from ..models.loading import resolve_model_path

    try:
        folder = generated_folder(cfg, resolve_model_path(cfg.model.path))
    except ModelError as exc:
        return {"folder": "", "found": 0, "to_generate": db.num_class_images, "given": False, "note": str(exc)}
    found = min(len(existing_images(folder)), db.num_class_images)
    return {"folder": str(folder), "found": found, "to_generate": db.num_class_images - found, "given": False}


def format_plan(plan: DataPlan) -> str:
    lines = ["datasets:"]
    lines += [f"  {d['folder']}: {d['images']} images, {d['samples_per_epoch']} samples/epoch" for d in plan.datasets]
    if plan.unreadable_images:
        lines.append(f"  {plan.unreadable_images} unreadable image(s) left out: run `sdlora lint`")
    accumulation = plan.gradient_accumulation
    lines += [
        f"steps: {plan.num_images} images x repeats = {plan.samples_per_epoch} samples/epoch; "
        f"{plan.batches_per_epoch} batches of <= {plan.batch_size} (buckets never mix)"
        + (f" / accumulation {accumulation}" if accumulation > 1 else "")
        + f" = {plan.steps_per_epoch:g} steps/epoch x {plan.epochs} epochs = {plan.total_steps} steps",
        "buckets (width x height, images):",
    ]
    lines += ["  " + row for row in format_histogram([((w, h), n) for w, h, n in plan.buckets])]
    lines.append("captions: " + ", ".join(f"{source} {n}" for source, n in plan.caption_sources.items()))
    lines.append("top tags: " + ", ".join(f"{tag} ({n})" for tag, n in plan.top_tags))
    if plan.lr_curve:
        lines.append("learning rate: " + ", ".join(f"step {s}: {lr:.3g}" for s, lr in plan.lr_curve))
    if plan.class_images:
        c = plan.class_images
        source = "given folder" if c["given"] else "generated by the base model"
        lines.append(f"class images ({source}): {c['found']} ready, {c['to_generate']} to generate in {c['folder']}")
    if plan.memory_note:
        lines.append(plan.memory_note)
    return "\n".join(lines)
