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
    _forget_previous_run_precision()
    return Accelerator(
        mixed_precision=train_cfg.mixed_precision,
        gradient_accumulation_steps=train_cfg.gradient_accumulation,
        cpu=on_cpu,
    )


def _forget_previous_run_precision() -> None:
    """accelerate keeps one process-wide state and refuses a second Accelerator with another
    mixed_precision. sdlora trains one run at a time in a single process, so a later run in the
    same process (the benchmarks, a notebook, the tests) may start from a clean state."""
    from accelerate.state import AcceleratorState, DistributedType

    state = AcceleratorState._shared_state
    if state and state.get("distributed_type", DistributedType.NO) == DistributedType.NO:
        AcceleratorState._reset_state()


def weight_dtype_for(mixed_precision: str):
    import torch

    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def vae_dtype_for(cfg, family: str):
    """model.vae_precision: SDXL's VAE overflows to NaN in fp16, so 'auto' keeps it fp32 there
    (unless a separate, fixed VAE is given)."""
    import torch

    choice = cfg.model.vae_precision
    if choice == "auto":
        choice = "fp32" if family == "sdxl" and not cfg.model.vae_path else "same"
    return torch.float32 if choice == "fp32" else weight_dtype_for(cfg.train.mixed_precision)


def text_encoder_lrs(cfg) -> dict:
    second = cfg.optim.text_encoder_2_lr or cfg.optim.text_encoder_lr
    return {"text_encoder": cfg.optim.text_encoder_lr, "text_encoder_2": second}


def prepare_model(base, cfg, accelerator) -> list:
    """Freeze + cast the base model, add LoRA (fp32), move to the device; return param groups."""
    import torch
    from diffusers.training_utils import cast_training_params

    from ..lora.inject import add_lora, trainable_parameters, trained_text_encoders
    from ..models.quantize import quantize_base

    dtype = weight_dtype_for(cfg.train.mixed_precision)
    quantize_base(base, cfg, accelerator.device)  # before the move: bitsandbytes quantizes on it
    for module in (base.unet, *base.text_encoders):
        module.to(accelerator.device, dtype=dtype)
    base.vae.to(accelerator.device, dtype=vae_dtype_for(cfg, base.family))
    torch.manual_seed(cfg.train.seed)  # LoRA init
    add_lora(base, cfg.lora)
    encoders = trained_text_encoders(base, cfg.lora)
    cast_training_params([base.unet, *encoders.values()], dtype=torch.float32)
    if cfg.train.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
        for encoder in encoders.values():
            encoder.gradient_checkpointing_enable()
    base.vae.eval()
    base.unet.train()
    for encoder in base.text_encoders:
        encoder.train(any(encoder is e for e in encoders.values()))
    groups = [{"params": trainable_parameters(base.unet), "lr": cfg.optim.learning_rate}]
    learning_rates = text_encoder_lrs(cfg)
    for name, encoder in encoders.items():
        groups.append({"params": trainable_parameters(encoder), "lr": learning_rates[name]})
    return groups


def trained_modules(base, lora_cfg) -> dict:
    """{component: module} of everything that carries trained LoRA layers (unet first)."""
    from ..lora.inject import trained_text_encoders

    return {"unet": base.unet, **trained_text_encoders(base, lora_cfg)}


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
    prior: Any = None  # PriorPairing when DreamBooth prior preservation is on
    class_images: Any = None  # ClassImageFolder (generated / reused counts)
    validation: Any = None  # ValidationSet when validation.path is set


def build_stream(cfg, warn: Callable[[str], None]):
    """Lint (errors stop the run, warnings are reported), scan, bucket: the data before any model."""
    from ..data.dreambooth import effective_data_config
    from ..data.lint import lint_dataset
    from ..data.scan import scan_for_training
    from ..data.stream import BatchStream, build_examples

    data_cfg = effective_data_config(cfg)
    report = lint_dataset(data_cfg)
    for message in report.warning_lines():
        warn(message)
    report.raise_for_errors()
    examples = build_examples(scan_for_training(data_cfg), data_cfg)
    return BatchStream(examples, data_cfg, cfg.train.batch_size, cfg.train.seed)


def build_prior(cfg, base, device):
    """Class images (generated by the plain base model if needed) and their pairing, or (None, None)."""
    if not (cfg.dreambooth.enabled and cfg.dreambooth.prior_preservation):
        return None, None
    from ..data.dreambooth import PriorPairing, class_images_in
    from .class_images import prepare_class_images

    for module in base.frozen_parts:
        module.to(device)  # generate where training runs
    prepared = prepare_class_images(cfg, base)
    images = class_images_in(prepared.folder, cfg.dreambooth.class_prompt, cfg.dreambooth.num_class_images,
                             cfg.data.resolution)
    return PriorPairing(images, cfg.train.batch_size, cfg.train.seed), prepared


def prompt_encoder(base, cfg):
    from ..models.prompts import PromptEncoder

    return PromptEncoder(base.family, base.tokenizers, base.text_encoders, cfg.model.clip_skip)


def build_inputs(base, cfg, warn: Callable[[str], None]):
    from .inputs import LatentSource, TextSource

    if cfg.data.cache_text_embeddings and cfg.lora.train_text_encoder:
        warn("data.cache_text_embeddings is ignored while lora.train_text_encoder is on (its outputs change every step).")
    latent_source = LatentSource(base.vae, cfg.data)
    text_source = TextSource(prompt_encoder(base, cfg), cfg.data.cache_text_embeddings, cfg.lora.train_text_encoder)
    return latent_source, text_source


def build_run(cfg, warn: Callable[[str], None]) -> RunParts:
    import torch

    from ..models.loading import load_base_model
    from .optim import build_lr_scheduler, build_optimizer

    stream = build_stream(cfg, warn)  # data errors before the slow model load
    plan = plan_steps(len(stream.examples), cfg.train, stream.batches_per_epoch)
    accelerator = make_accelerator(cfg.train)
    base = load_base_model(cfg.model)
    prior, class_images = build_prior(cfg, base, accelerator.device)  # before LoRA: class images come from the plain model
    groups = prepare_model(base, cfg, accelerator)
    optimizer = build_optimizer(groups, cfg.optim, warn)
    lr_scheduler = build_lr_scheduler(optimizer, cfg.optim, plan.total_steps)
    trained = trained_modules(base, cfg.lora)
    *wrapped, optimizer = accelerator.prepare(*trained.values(), optimizer)
    for name, module in zip(trained, wrapped):
        setattr(base, name, module)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    latent_source, text_source = build_inputs(base, cfg, warn)
    validation = None
    if cfg.validation.path:
        from .validation import ValidationSet

        validation = ValidationSet(cfg, base, accelerator)
    parts = RunParts(accelerator, base, stream, plan, optimizer, lr_scheduler, generator, latent_source, text_source,
                     prior, class_images, validation)
    from .offload import offload_encoders_after_caching

    offload_encoders_after_caching(parts, cfg, warn)  # train.offload_encoders: after the caches are full
    return parts
