"""train.memory = 'auto' and the plan's memory warning: turn on memory savers in a fixed order
until the estimate (sdlora.train.memory) fits the target, and say what was chosen.

The order goes from free to costly: caching latents and text (and, on CUDA, moving the encoders
off the GPU) costs nothing per step; 8-bit AdamW barely changes training; gradient checkpointing
costs ~30% speed; an int8 then nf4 base changes the frozen weights slightly; a smaller batch
with more accumulation keeps the effective batch but runs slower. Savers are only turned on,
never off: a user's own choice is never undone.
"""
from __future__ import annotations

from dataclasses import dataclass

from .memory import (
    GIB,
    MemoryEstimate,
    device_free_memory,
    estimate,
    human_bytes,
    model_facts,
    training_device,
)


def offload_blockers(cfg) -> list[str]:
    """Options that keep the encoders needed on the device every step (empty: they may leave)."""
    data, blockers = cfg.data, []
    checks = [
        (data.cache_latents == "off", "data.cache_latents = 'off'"),
        (not data.cache_text_embeddings, "data.cache_text_embeddings = false"),
        (cfg.lora.train_text_encoder, "lora.train_text_encoder = true"),
        (not data.center_crop, "data.center_crop = false (random crops)"),
        (data.random_flip, "data.random_flip = true"),
        (data.shuffle_tags or data.caption_dropout_rate > 0 or data.tag_dropout_rate > 0,
         "caption shuffle / dropout"),
        (cfg.dreambooth.enabled and cfg.dreambooth.prior_preservation, "DreamBooth prior preservation"),
        (bool(cfg.validation.path), "validation.path (validation encodes captions every time)"),
    ]
    for blocked, name in checks:
        if blocked:
            blockers.append(name)
    return blockers


def _caching(cfg, device: str) -> dict:
    changes = {}
    if cfg.data.cache_latents == "off":
        changes["data.cache_latents"] = "memory"
    if not cfg.data.cache_text_embeddings and not cfg.lora.train_text_encoder:
        changes["data.cache_text_embeddings"] = True
    if device == "cuda" and not cfg.train.offload_encoders:
        after = with_changes(cfg, changes) if changes else cfg
        if not offload_blockers(after):
            changes["train.offload_encoders"] = True
    return changes


def _adam8bit(cfg, device: str) -> dict:
    return {"optim.optimizer": "adamw8bit"} if cfg.optim.optimizer == "adamw" else {}


def _checkpointing(cfg, device: str) -> dict:
    return {} if cfg.train.gradient_checkpointing else {"train.gradient_checkpointing": True}


def _quantize(cfg, device: str) -> dict:
    return {"none": {"model.quantize": "int8"}, "int8": {"model.quantize": "nf4"}}.get(cfg.model.quantize, {})


def _smaller_batch(cfg, device: str) -> dict:
    batch = cfg.train.batch_size
    if batch == 1:
        return {}
    smaller = batch // 2 if batch % 2 == 0 else 1
    accumulation = cfg.train.gradient_accumulation * batch // smaller  # effective batch unchanged
    return {"train.batch_size": smaller, "train.gradient_accumulation": accumulation}


SAVERS = (_caching, _adam8bit, _checkpointing, _quantize, _smaller_batch)


def with_changes(cfg, changes: dict):
    """A validated copy of cfg with {'section.name': value} applied."""
    from ..config.io import deep_merge, from_dict, to_dict

    overlay: dict = {}
    for key, value in changes.items():
        section, name = key.split(".")
        overlay.setdefault(section, {})[name] = value
    return from_dict(deep_merge(to_dict(cfg), overlay))


def _toml(value) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else repr(value)


@dataclass
class MemoryChoice:
    """What the savers did: the config after them, estimates before/after, the target."""

    cfg: object
    before: MemoryEstimate
    after: MemoryEstimate
    changes: list  # ["train.gradient_checkpointing = true", ...]
    target: int | None
    target_source: str

    @property
    def fits(self) -> bool:
        return self.target is None or self.after.total <= self.target

    def summary(self) -> str:
        chosen = ", ".join(self.changes) if self.changes else "nothing (the settings as given fit)"
        target = f"{human_bytes(self.target)} ({self.target_source})" if self.target is not None else "unknown"
        verdict = "fits" if self.fits else "does NOT fit even so"
        return (f"memory = auto chose: {chosen}; estimate {human_bytes(self.before.total)} -> "
                f"{human_bytes(self.after.total)}, target {target}: {verdict}")


def choose(facts, cfg, bucket, device: str, target: int | None) -> MemoryChoice:
    """Apply SAVERS in order, each until it has nothing more to give, until the estimate fits."""
    before = current_estimate = estimate(facts, cfg, bucket, device)
    current, changes = cfg, {}
    for saver in SAVERS:
        while target is not None and current_estimate.total > target:
            step = saver(current, device)
            if not step:
                break
            current = with_changes(current, step)
            changes.update(step)  # a key changed twice (int8, then nf4) is reported once, as it ends
            current_estimate = estimate(facts, current, bucket, device)
    described = [f"{key} = {_toml(value)}" for key, value in changes.items()]
    return MemoryChoice(current, before, current_estimate, described, target, "")


def memory_target(train_cfg, device: str) -> tuple[int | None, str]:
    """(bytes the run may use, where that figure comes from)."""
    if train_cfg.memory_target_gb > 0:
        return int(train_cfg.memory_target_gb * GIB), "train.memory_target_gb"
    free = device_free_memory(device)
    return free, ("free GPU memory" if device == "cuda" else "available RAM") if free is not None else "unknown"


def plan_memory(cfg, bucket) -> tuple[MemoryChoice, str]:
    """The choice for cfg (no change unless train.memory = 'auto') and the device it was made for."""
    device = training_device(cfg.train)
    facts = model_facts(cfg.model)
    target, source = memory_target(cfg.train, device)
    if cfg.train.memory == "auto":
        choice = choose(facts, cfg, bucket, device, target)
    else:
        now = estimate(facts, cfg, bucket, device)
        choice = MemoryChoice(cfg, now, now, [], target, source)
    choice.target_source = source
    return choice, device


def report_lines(choice: MemoryChoice, cfg, bucket, device: str) -> list[str]:
    """The plan's memory section: breakdown, target, and advice when it does not fit."""
    lines = choice.after.lines()
    if choice.target is not None:
        lines.append(f"  target: {human_bytes(choice.target)} ({choice.target_source}, {device})")
    if cfg.train.memory == "auto":
        return [choice.summary()] + lines
    if choice.fits:
        return lines
    would = choose(model_facts(cfg.model), cfg, bucket, device, choice.target)
    if would.fits:
        advice = (f"settings that would fit (estimate {human_bytes(would.after.total)}): "
                  + ", ".join(would.changes) + "; or set train.memory = 'auto'.")
    else:
        advice = (f"even with every saver ({', '.join(would.changes) or 'all on already'}) the estimate is "
                  f"{human_bytes(would.after.total)}: lower data.resolution or lora.rank, or use a device with "
                  "more memory.")
    return lines + [f"WARNING: the estimate {human_bytes(choice.after.total)} exceeds the target "
                    f"{human_bytes(choice.target)}; " + advice]


def largest_bucket(cfg) -> tuple[int, int]:
    from ..data.plan import make_plan

    buckets = make_plan(cfg, with_lr=False, with_memory=False).buckets
    return max(((w, h) for w, h, _ in buckets), key=lambda b: b[0] * b[1])


def resolve_memory(cfg):
    """Before a run: (the config it uses, a MemoryPlan event). With train.memory = 'auto' the savers
    are applied; in 'manual' mode the estimate is only reported, and only when it exceeds the target.
    An estimate that cannot be made (e.g. no model yet) is left to the model load to report."""
    from ..errors import SdloraError
    from ..events import MemoryPlan

    try:
        bucket = largest_bucket(cfg)
        choice, device = plan_memory(cfg, bucket)
    except (SdloraError, OSError, KeyError, ValueError):
        if cfg.train.memory == "auto":
            raise
        return cfg, None
    if cfg.train.memory != "auto" and choice.fits:
        return cfg, None
    lines = report_lines(choice, cfg, bucket, device)
    summary = choice.summary() if cfg.train.memory == "auto" else lines[-1]
    event = MemoryPlan(summary=summary, estimate_bytes=choice.after.total, target_bytes=choice.target or 0,
                       fits=choice.fits, changes=choice.changes, breakdown=lines)
    return choice.cfg, event
