"""Build everything a run needs: device/precision, model + LoRA, data stream, optimizer, schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import TrainingError


@dataclass
class StepPlan:
    """Step math, computed before any model work."""

    num_images: int
    batches_per_epoch: int  # micro-batches
    steps_per_epoch: float  # optimizer steps; fractional when accumulation spans epochs
    total_steps: int
    epochs: int


def plan_steps(num_images: int, train_cfg, batches_per_epoch: int | None = None) -> StepPlan:
    """Optimizer steps from images (x repeats) and batches; with buckets pass the stream's count."""
    batches = batches_per_epoch if batches_per_epoch is not None else math.ceil(num_images / train_cfg.batch_size)
    per_epoch = batches / train_cfg.gradient_accumulation
    if train_cfg.max_steps > 0:
        total = train_cfg.max_steps
        epochs = math.ceil(total / per_epoch)
    else:
        epochs = train_cfg.epochs
        total = math.ceil(epochs * per_epoch)
    return StepPlan(num_images, batches, per_epoch, total, epochs)


def make_accelerator(train_cfg):
    import torch
    from accelerate import Accelerator

    device = train_cfg.device
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device = 'cuda' but no CUDA GPU is available; use 'auto' or 'cpu'.")
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if on_cpu and train_cfg.mixed_precision == "fp16":
        raise TrainingError(
            "train.mixed_precision = 'fp16' needs a CUDA GPU; on CPU use 'bf16' or 'no'."
        )
    return Accelerator(
        mixed_precision=train_cfg.mixed_precision,
        gradient_accumulation_steps=train_cfg.gradient_accumulation,
        cpu=on_cpu,
    )


def weight_dtype_for(mixed_precision: str):
    import torch

    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def prepare_model(base, cfg, accelerator) -> list:
    """Freeze + cast the base model, add LoRA (fp32), move to the device; return param groups."""
    import torch
    from diffusers.training_utils import cast_training_params

    from ..lora.inject import add_lora, trainable_parameters

    dtype = weight_dtype_for(cfg.train.mixed_precision)
    for module in (base.unet, base.vae, base.text_encoder):
        module.to(accelerator.device, dtype=dtype)
    torch.manual_seed(cfg.train.seed)  # LoRA init
    add_lora(base, cfg.lora)
    models = [base.unet] + ([base.text_encoder] if cfg.lora.train_text_encoder else [])
    cast_training_params(models, dtype=torch.float32)
    if cfg.train.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
        if cfg.lora.train_text_encoder:
            base.text_encoder.gradient_checkpointing_enable()
    base.vae.eval()
    base.unet.train()
    base.text_encoder.train(cfg.lora.train_text_encoder)
    groups = [{"params": trainable_parameters(base.unet), "lr": cfg.optim.learning_rate}]
    if cfg.lora.train_text_encoder:
        groups.append({"params": trainable_parameters(base.text_encoder), "lr": cfg.optim.text_encoder_lr})
    return groups


@dataclass
class RunParts:
    accelerator: Any
    base: Any
    stream: Any
    plan: StepPlan
    optimizer: Any
    lr_scheduler: Any
    generator: Any  # the training RNG: VAE sampling, noise and timesteps
    latent_source: Any = None
    text_source: Any = None


def build_stream(cfg, warn: Callable[[str], None]):
    """Lint (errors stop the run, warnings are reported), scan, bucket: the data before any model."""
    from ..data.lint import lint_dataset
    from ..data.scan import scan_for_training
    from ..data.stream import BatchStream, build_examples

    report = lint_dataset(cfg.data)
    for message in report.warning_lines():
        warn(message)
    report.raise_for_errors()
    examples = build_examples(scan_for_training(cfg.data), cfg.data)
    return BatchStream(examples, cfg.data, cfg.train.batch_size, cfg.train.seed)


def build_inputs(base, cfg, warn: Callable[[str], None]):
    from .inputs import LatentSource, TextSource

    if cfg.data.cache_text_embeddings and cfg.lora.train_text_encoder:
        warn("data.cache_text_embeddings is ignored while lora.train_text_encoder is on (its outputs change every step).")
    latent_source = LatentSource(base.vae, cfg.data)
    text_source = TextSource(base.tokenizer, base.text_encoder, cfg.data.cache_text_embeddings, cfg.lora.train_text_encoder)
    return latent_source, text_source


def build_run(cfg, warn: Callable[[str], None]) -> RunParts:
    import torch

    from ..models.loading import load_base_model
    from .optim import build_lr_scheduler, build_optimizer

    stream = build_stream(cfg, warn)  # data errors before the slow model load
    plan = plan_steps(len(stream.examples), cfg.train, stream.batches_per_epoch)
    accelerator = make_accelerator(cfg.train)
    base = load_base_model(cfg.model)
    groups = prepare_model(base, cfg, accelerator)
    optimizer = build_optimizer(groups, cfg.optim, warn)
    lr_scheduler = build_lr_scheduler(optimizer, cfg.optim, plan.total_steps)
    trained = [base.unet] + ([base.text_encoder] if cfg.lora.train_text_encoder else [])
    prepared = accelerator.prepare(*trained, optimizer)
    base.unet, optimizer = prepared[0], prepared[-1]
    if cfg.lora.train_text_encoder:
        base.text_encoder = prepared[1]
    generator = torch.Generator().manual_seed(cfg.train.seed)
    latent_source, text_source = build_inputs(base, cfg, warn)
    return RunParts(accelerator, base, stream, plan, optimizer, lr_scheduler, generator, latent_source, text_source)
