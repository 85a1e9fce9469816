"""Peak-memory preflight: a breakdown of what a run will hold, from the model's configs alone.

The model is built on the meta device from its config files (no weights read), so Linear layers
(which model.quantize stores as int8 / nf4), convolutions and embeddings are told apart exactly.
The breakdown: the process baseline (CPU: Python + torch + diffusers + transformers + peft, what
dominates a tiny model; CUDA: context and kernels), frozen weights per component at their dtype or
quantization (on CUDA the VAE and text encoder count 0 when train.offload_encoders moves them to
the CPU), LoRA parameters + gradients + optimizer state (8-bit AdamW keeps 2 bytes per element for
tensors of >= optim.min_8bit_size elements), and activations of the UNet's backward pass.

The activation term is batch x latent pixels x sum(UNet block widths) x bytes x K, with K measured
on full-size SD1.5 at 512 px, batch 1, rank 16 on CPU (BENCHMARKS.md): K = 43 without gradient
checkpointing, 23 with it. Attention memory grows faster than the pixel count with some attention
kernels, so far from 512 px (SD1.5) the term is an extrapolation. bench/train_step.py prints the
estimate beside the measured peak.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

GIB = 1024**3
MIB = 1024**2
DTYPE_BYTES = {"no": 4, "fp16": 2, "bf16": 2}
ACTIVATION_VALUES = {False: 43, True: 23}  # per (latent pixel x UNet block channel) per image; see module note
VAE_ENCODE_VALUES = 4  # full-resolution feature maps of the VAE encoder's first block alive at once
TEXT_ACTIVATION_VALUES = 24  # per (token x hidden unit x layer) when the text encoder trains
CPU_BASELINE = 500 * MIB  # Python + libraries + torch workspace: tiny run measured 0.51 GiB, 0.40 GiB of it imports
CUDA_BASELINE = 512 * MIB  # CUDA context + kernels; outside torch.cuda.max_memory_allocated
NF4_BLOCK = 64  # bitsandbytes 4-bit block size: one absmax per block (8-bit with double quantization)


@dataclass
class ComponentSize:
    """Element counts of one frozen component, split by how quantization treats them."""

    linear: int = 0  # nn.Linear weight elements (quantized by model.quantize)
    linear_rows: int = 0  # output rows of those layers (int8 keeps one fp32 scale per row)
    other: int = 0  # everything else: convolutions, norms, embeddings, biases, buffers

    @property
    def total(self) -> int:
        return self.linear + self.other


@dataclass
class ModelFacts:
    """What the estimate needs of a model: component sizes, LoRA target shapes, UNet widths."""

    family: str
    components: dict  # name -> ComponentSize (unet, vae, text_encoder[, text_encoder_2])
    lora_shapes: dict  # (component, unet_targets or 'text') -> [(out, in x kernel)] of targeted layers
    unet_block_channels: tuple
    text_hidden: dict = field(default_factory=dict)  # text component -> (hidden size, layers)
    vae_first_channels: int = 128  # width of the VAE encoder's full-resolution block


@dataclass
class MemoryEstimate:
    device: str  # "cpu" or "cuda"
    parts: list  # [(label, bytes)]
    lora_params: int
    settings: str  # the settings it was computed for, in words

    @property
    def total(self) -> int:
        return sum(size for _, size in self.parts)

    def part(self, label_start: str) -> int:
        return sum(size for label, size in self.parts if label.startswith(label_start))

    def lines(self) -> list[str]:
        where = "RAM (RSS)" if self.device == "cpu" else "GPU memory"
        lines = [f"peak {where} estimate: {human_bytes(self.total)} (+-25%; {self.settings})"]
        lines += [f"  {label:<44} {human_bytes(size):>10}" for label, size in self.parts]
        return lines

    def to_dict(self) -> dict:
        return {"device": self.device, "total": self.total, "parts": [[k, v] for k, v in self.parts],
                "frozen_weights": sum(v for k, v in self.parts if " weights (" in k),
                "lora_params": self.lora_params, "settings": self.settings}


def human_bytes(count: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", MIB)):
        if count >= size:
            return f"{count / size:.2f} {unit}"
    return f"{count / 1024:.1f} KiB"


# ----------------------------------------------------------------------------- model facts


def model_facts(model_cfg) -> ModelFacts:
    """Facts of the model named by [model], from config files only (meta device, no weights)."""
    from ..export.shapes import meta_components, shape_of_folder, standard_shape
    from ..models.loading import resolve_model_path

    path = resolve_model_path(model_cfg.path, model_cfg.allow_pickle)
    if path.is_file():
        from ..models.single_file import peek_family

        family = model_cfg.family if model_cfg.family != "auto" else peek_family(path)
        shape, vae_config = standard_shape(family), None
    else:
        shape = shape_of_folder(path)
        vae_file = path / "vae" / "config.json"
        vae_config = json.loads(vae_file.read_text(encoding="utf-8")) if vae_file.is_file() else None
    return facts_of_modules(shape.family, {**meta_components(shape), "vae": _meta_vae(vae_config)})


def _meta_vae(config: dict | None):
    import torch
    from diffusers import AutoencoderKL

    config = {k: v for k, v in (config or {}).items() if not k.startswith("_")}
    if not config:  # single files: the SD VAE (SD1/SD2/SDXL share its shape)
        config = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                      down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    with torch.device("meta"):
        return AutoencoderKL.from_config(config)


def facts_of_modules(family: str, modules: dict) -> ModelFacts:
    from ..lora.inject import TEXT_ENCODER_TARGETS, UNET_TARGETS

    components = {name: component_size(module) for name, module in modules.items()}
    lora_shapes = {("unet", key): target_shapes(modules["unet"], targets) for key, targets in UNET_TARGETS.items()}
    text = [name for name in modules if name.startswith("text_encoder")]
    for name in text:  # per encoder: SDXL may train CLIP-L alone (lora.train_text_encoder_2 = false)
        lora_shapes[("text", name)] = target_shapes(modules[name], TEXT_ENCODER_TARGETS)
    hidden = {name: (modules[name].config.hidden_size, modules[name].config.num_hidden_layers) for name in text}
    channels = tuple(modules["unet"].config.block_out_channels)
    return ModelFacts(family, components, lora_shapes, channels, hidden, modules["vae"].config.block_out_channels[0])


def component_size(module) -> ComponentSize:
    import torch

    size = ComponentSize()
    for sub in module.modules():
        own = list(sub.parameters(recurse=False))  # buffers (position ids) are a few hundred bytes
        if type(sub) is torch.nn.Linear:
            size.linear += sub.weight.numel()
            size.linear_rows += sub.out_features
            size.other += sum(t.numel() for t in own) - sub.weight.numel()
        else:
            size.other += sum(t.numel() for t in own)
    return size


def target_shapes(module, targets) -> list:
    """(out, in x kernel) of every Linear / conv weight whose module name ends with a target."""
    shapes = []
    for name, sub in module.named_modules():
        weight = getattr(sub, "weight", None)
        if weight is not None and weight.dim() >= 2 and any(name == t or name.endswith("." + t) for t in targets):
            shapes.append((weight.shape[0], math.prod(weight.shape[1:])))
    return shapes


# ----------------------------------------------------------------------------- the estimate


def frozen_bytes(size: ComponentSize, quantize: str, dtype_bytes: int) -> int:
    other = size.other * dtype_bytes
    if quantize == "int8":  # int8 weights + one fp32 scale per output row
        return other + size.linear + 4 * size.linear_rows
    if quantize == "nf4":  # 4-bit weights + an 8-bit absmax per block (double quantization)
        return other + size.linear // 2 + size.linear // NF4_BLOCK
    return other + size.linear * dtype_bytes


def lora_tensors(facts: ModelFacts, lora_cfg) -> list[int]:
    """Element counts of every LoRA tensor (A: rank x in, B: out x rank)."""
    shapes = list(facts.lora_shapes[("unet", lora_cfg.unet_targets)])
    for name in trained_encoder_names(facts, lora_cfg):
        shapes += facts.lora_shapes[("text", name)]
    return [n for out, inp in shapes for n in (lora_cfg.rank * inp, out * lora_cfg.rank)]


def trained_encoder_names(facts: ModelFacts, lora_cfg) -> list[str]:
    if not lora_cfg.train_text_encoder:
        return []
    return [n for n in facts.text_hidden if n == "text_encoder" or lora_cfg.train_text_encoder_2]


def optimizer_bytes(tensors: list[int], optim_cfg) -> int:
    name = optim_cfg.optimizer
    if name == "adamw8bit":  # two uint8 states (+ a float per 256-element block) or two fp32 states
        return sum(2 * n + 8 * math.ceil(n / 256) if n >= optim_cfg.min_8bit_size else 8 * n for n in tensors)
    if name == "adafactor":  # factored second moment: about a row and a column per tensor
        return sum(8 * int(math.sqrt(n)) for n in tensors)
    if name == "prodigy":  # exp_avg, exp_avg_sq, s, p0
        return 16 * sum(tensors)
    return 8 * sum(tensors)  # adamw: exp_avg + exp_avg_sq in fp32


def forward_batch(cfg) -> int:
    """Images per forward pass: DreamBooth prior preservation appends one class image per instance image."""
    paired = cfg.dreambooth.enabled and cfg.dreambooth.prior_preservation
    return cfg.train.batch_size * (2 if paired else 1)


def activation_bytes(facts: ModelFacts, cfg, bucket: tuple[int, int]) -> int:
    act = DTYPE_BYTES[cfg.train.mixed_precision]
    latent_pixels = (bucket[0] // 8) * (bucket[1] // 8)
    unet = forward_batch(cfg) * latent_pixels * sum(facts.unet_block_channels) * act
    unet *= ACTIVATION_VALUES[cfg.train.gradient_checkpointing]
    if cfg.lora.train_text_encoder:
        per_token = sum(facts.text_hidden[n][0] * facts.text_hidden[n][1] for n in trained_encoder_names(facts, cfg.lora))
        unet += forward_batch(cfg) * 77 * per_token * TEXT_ACTIVATION_VALUES * act
    # the VAE encodes one image at a time (inputs.py), before the UNet's activations exist
    vae_encode = bucket[0] * bucket[1] * facts.vae_first_channels * act * VAE_ENCODE_VALUES
    return max(unet, vae_encode)


def encoders_offloaded(cfg, device: str) -> bool:
    return device == "cuda" and cfg.train.offload_encoders


def estimate(facts: ModelFacts, cfg, bucket: tuple[int, int], device: str) -> MemoryEstimate:
    """The breakdown for `cfg` at its largest bucket on `device` ('cpu' or 'cuda')."""
    import torch

    from .setup import vae_dtype_for

    dtype_bytes = DTYPE_BYTES[cfg.train.mixed_precision]
    quant = cfg.model.quantize
    parts = [("process baseline (Python + libraries)" if device == "cpu" else "CUDA context + kernels",
              CPU_BASELINE if device == "cpu" else CUDA_BASELINE)]
    dtype_name = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}[cfg.train.mixed_precision]
    offloaded = encoders_offloaded(cfg, device)
    vae_fp32 = vae_dtype_for(cfg, facts.family) == torch.float32  # SDXL's VAE stays fp32 (model.vae_precision)
    for name, size in facts.components.items():
        own_bytes, own_name = (4, "fp32") if name == "vae" and vae_fp32 else (dtype_bytes, dtype_name)
        kind = own_name if name == "vae" or quant == "none" else f"{quant} + {dtype_name}"
        resident = not (offloaded and name != "unet")
        label = f"{name} weights ({kind})" if resident else f"{name} weights (offloaded to CPU after caching)"
        parts.append((label, frozen_bytes(size, "none" if name == "vae" else quant, own_bytes) if resident else 0))
    tensors = lora_tensors(facts, cfg.lora)
    parts.append((f"LoRA params + grads ({sum(tensors):,d} fp32)", 8 * sum(tensors)))
    parts.append((f"optimizer state ({cfg.optim.optimizer})", optimizer_bytes(tensors, cfg.optim)))
    checkpointing = "checkpointing" if cfg.train.gradient_checkpointing else "no checkpointing"
    batch = f"batch {cfg.train.batch_size}" + (" + as many class images" if forward_batch(cfg) > cfg.train.batch_size else "")
    parts.append((f"activations ({bucket[0]}x{bucket[1]}, {batch}, {checkpointing})",
                  activation_bytes(facts, cfg, bucket)))
    return MemoryEstimate(device, parts, sum(tensors), settings_summary(cfg))


def settings_summary(cfg) -> str:
    t = cfg.train
    return (f"quantize {cfg.model.quantize}, {cfg.optim.optimizer}, batch {t.batch_size} x accumulation "
            f"{t.gradient_accumulation}, checkpointing {'on' if t.gradient_checkpointing else 'off'}, "
            f"precision {t.mixed_precision}, rank {cfg.lora.rank}")


def training_device(train_cfg) -> str:
    """'cuda' or 'cpu': where train.device puts the run on this machine."""
    if train_cfg.device != "auto":
        return train_cfg.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_free_memory(device: str) -> int | None:
    """Free memory of the device now: CUDA free VRAM, or the RAM Linux reports as available
    (None where neither can be read, e.g. CPU on a system without /proc/meminfo)."""
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()[0]
    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        return None
    lines = meminfo.read_text().splitlines()
    return next((int(line.split()[1]) * 1024 for line in lines if line.startswith("MemAvailable:")), None)
