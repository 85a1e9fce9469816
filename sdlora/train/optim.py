"""Optimizer by name, and the learning-rate schedule (diffusers' get_scheduler)."""
from __future__ import annotations

import logging
from typing import Callable

from ..errors import TrainingError


def build_optimizer(param_groups: list[dict], optim_cfg, warn: Callable[[str], None]):
    """`param_groups`: [{'params': [...], 'lr': ...}, ...]; other hyper-parameters from [optim]."""
    import torch

    name = optim_cfg.optimizer
    betas = (optim_cfg.beta1, optim_cfg.beta2)
    common = dict(lr=optim_cfg.learning_rate, weight_decay=optim_cfg.weight_decay)
    if name == "adamw8bit":
        optimizer = _adamw8bit(param_groups, optim_cfg, betas, warn)
        if optimizer is not None:
            return optimizer
        name = "adamw"
    if name == "adamw":
        return torch.optim.AdamW(param_groups, betas=betas, eps=optim_cfg.epsilon, **common)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(param_groups, scale_parameter=False, relative_step=False, warmup_init=False, **common)
    if name == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise TrainingError(
                "optim.optimizer = 'prodigy' needs the prodigyopt package: run `pip install prodigyopt`, "
                "or choose adamw8bit / adamw / adafactor."
            ) from None
        return Prodigy(param_groups, betas=betas, **common)
    raise TrainingError(f"Unknown optimizer {name!r}.")


def _adamw8bit(param_groups, optim_cfg, betas, warn):
    """bitsandbytes AdamW8bit, or None (with a warning) when bitsandbytes cannot run here."""
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # harmless kernel-probe noise on CPU
    try:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(
            param_groups,
            lr=optim_cfg.learning_rate,
            betas=betas,
            eps=optim_cfg.epsilon,
            weight_decay=optim_cfg.weight_decay,
            min_8bit_size=optim_cfg.min_8bit_size,
        )
    except (ImportError, RuntimeError, OSError) as exc:
        warn(
            f"bitsandbytes cannot run on this machine ({type(exc).__name__}: {exc}); using torch AdamW "
            "(32-bit state, more memory) instead. Set optim.optimizer = 'adamw' to silence this."
        )
        return None


def build_lr_scheduler(optimizer, optim_cfg, total_steps: int):
    from diffusers.optimization import get_scheduler

    name = optim_cfg.lr_scheduler
    if name == "constant" and optim_cfg.lr_warmup_steps > 0:
        name = "constant_with_warmup"  # plain 'constant' would silently ignore the warm-up
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=optim_cfg.lr_warmup_steps,
        num_training_steps=total_steps,
        num_cycles=optim_cfg.lr_num_cycles,
        power=optim_cfg.lr_power,
    )
