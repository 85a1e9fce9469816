"""THE schema: every training option, declared once with default, help, choices and bounds."""
from __future__ import annotations

from dataclasses import dataclass, field

from .fields import option

CONFIG_VERSION = 1

FAMILIES = ("auto", "sd15", "sd2", "sd2-v", "sdxl")
OPTIMIZERS = ("adamw8bit", "adamw", "adafactor", "prodigy")
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
)


@dataclass
class ModelSection:
    path: str = option(
        "",
        "Base model: a diffusers folder, a single-file checkpoint (.safetensors in the original "
        "A1111/ComfyUI layout, read offline), a hub id (needs a local cache when offline), or "
        "'builtin:tiny-sd15' / 'builtin:tiny-sd2-v' for the built-in tiny test models.",
    )
    family: str = option(
        "auto",
        "Model family; 'auto' detects it from the model's configs.",
        choices=FAMILIES,
        advanced=True,
    )
    prediction_type: str = option(
        "auto",
        "What the UNet predicts; 'auto' reads the scheduler config (v_prediction for SD2 768-v), or a "
        "single file's metadata (an SD2 file that does not say is taken as 768-v, as diffusers does).",
        choices=("auto", "epsilon", "v_prediction"),
        advanced=True,
    )
    allow_pickle: bool = option(
        False,
        "Allow a pickle checkpoint (.ckpt) as model.path. Pickle files can run code when opened; "
        "sdlora reads them weights-only (torch.load weights_only=True), but prefer converting to "
        ".safetensors (sdlora convert) on a machine you trust.",
        advanced=True,
    )


@dataclass
class DataSection:
    path: str = option(
        "",
        "Folder of training images with same-name caption files, or 'builtin:demo-shapes'.",
    )
    resolution: int = option(512, "Training side length in pixels (multiple of 8).", min=64, max=4096)
    caption_extension: str = option(".txt", "Extension of caption side files.", choices=(".txt", ".caption"))
    missing_caption: str = option(
        "error",
        "What to do with an image that has no caption file: stop with an error, use "
        "data.default_caption, or use the file name.",
        choices=("error", "default", "filename"),
    )
    default_caption: str = option("", "Caption for images without one when missing_caption = 'default'.")
    center_crop: bool = option(True, "Center-crop after resizing the short side (else random crop).", advanced=True)
    random_flip: bool = option(False, "Flip images horizontally at random (not for asymmetric subjects).")


@dataclass
class LoraSection:
    rank: int = option(16, "LoRA rank (network dim): capacity of the adapter.", min=1, max=1024)
    alpha: float = option(
        16.0,
        "LoRA alpha: the update is scaled by alpha / rank. alpha = rank means scale 1.",
        min=0.0,
        max=4096.0,
    )
    dropout: float = option(0.0, "Dropout on the LoRA input during training.", min=0.0, max=0.9, advanced=True)
    init: str = option(
        "default",
        "Initialisation of LoRA A (B starts at zero, so training starts from the base model): "
        "'default' is Kaiming-uniform, 'gaussian' is normal with std 1/rank.",
        choices=("default", "gaussian"),
        advanced=True,
    )
    unet_targets: str = option(
        "attn",
        "UNet layers to adapt: 'attn' = attention to_q/to_k/to_v/to_out; 'attn-ff' adds the "
        "feed-forward and proj_in/proj_out layers; 'attn-ff-conv' also the resnets' 3x3 convs "
        "(LoCon; loads in A1111, ComfyUI and diffusers).",
        choices=("attn", "attn-ff", "attn-ff-conv"),
    )
    train_text_encoder: bool = option(
        False, "Also adapt the text encoder's attention (q/k/v/out_proj), with optim.text_encoder_lr."
    )


@dataclass
class OptimSection:
    optimizer: str = option(
        "adamw8bit",
        "Optimizer: adamw8bit (bitsandbytes, least memory), adamw, adafactor, prodigy "
        "(needs the prodigyopt package; set learning_rate to 1.0).",
        choices=OPTIMIZERS,
    )
    learning_rate: float = option(1e-4, "Learning rate of the UNet LoRA.", min=0.0, max=10.0)
    text_encoder_lr: float = option(
        5e-5, "Learning rate of the text-encoder LoRA (when lora.train_text_encoder).", min=0.0, max=10.0
    )
    weight_decay: float = option(1e-2, "Decoupled weight decay.", min=0.0, max=1.0, advanced=True)
    beta1: float = option(0.9, "Adam beta1.", min=0.0, max=0.9999, advanced=True)
    beta2: float = option(0.999, "Adam beta2.", min=0.0, max=0.99999, advanced=True)
    epsilon: float = option(1e-8, "Adam epsilon.", min=0.0, max=1.0, advanced=True)
    max_grad_norm: float = option(1.0, "Clip gradients to this norm; 0 turns clipping off.", min=0.0, max=1e6)
    min_8bit_size: int = option(
        4096,
        "adamw8bit keeps 32-bit state for tensors with fewer elements than this.",
        min=1,
        max=1 << 30,
        advanced=True,
    )
    lr_scheduler: str = option("constant", "Learning-rate schedule.", choices=LR_SCHEDULERS)
    lr_warmup_steps: int = option(0, "Linear warm-up steps at the start.", min=0, max=1_000_000)
    lr_num_cycles: int = option(1, "Restarts for cosine_with_restarts.", min=1, max=1000, advanced=True)
    lr_power: float = option(1.0, "Power of the polynomial schedule.", min=0.0, max=10.0, advanced=True)


@dataclass
class TrainSection:
    epochs: int = option(10, "Passes over the dataset (ignored when max_steps > 0).", min=1, max=100_000)
    max_steps: int = option(0, "Stop after this many optimizer steps; 0 = use epochs.", min=0, max=10_000_000)
    batch_size: int = option(1, "Images per forward pass.", min=1, max=1024)
    gradient_accumulation: int = option(
        1, "Forward passes per optimizer step (effective batch = batch_size x this).", min=1, max=1024
    )
    gradient_checkpointing: bool = option(
        False, "Recompute UNet activations in the backward pass: less memory, ~30% slower."
    )
    mixed_precision: str = option(
        "no",
        "Compute precision of the frozen model; LoRA weights stay fp32. fp16 needs a GPU.",
        choices=("no", "fp16", "bf16"),
    )
    seed: int = option(42, "Seed for noise, timesteps, data order and LoRA init.", min=0, max=2**32 - 1)
    min_snr_gamma: float = option(
        0.0, "Min-SNR loss weighting gamma (5 is common); 0 turns it off.", min=0.0, max=100.0
    )
    noise_offset: float = option(
        0.0, "Noise offset (0.05-0.1 helps very dark/bright images); 0 turns it off.", min=0.0, max=1.0
    )
    device: str = option("auto", "Where to train: 'auto' picks CUDA when present.", choices=("auto", "cpu", "cuda"))


@dataclass
class SampleSection:
    prompts: list = option(
        [], "Prompts for preview images during training; empty = no previews.", item_type=str
    )
    negative_prompt: str = option("", "Negative prompt for every preview.")
    every_n_steps: int = option(0, "Render previews every N steps (0 = only after the last step).", min=0, max=10_000_000)
    steps: int = option(20, "Denoising steps per preview.", min=1, max=1000)
    guidance_scale: float = option(7.5, "Classifier-free guidance scale.", min=0.0, max=50.0)
    seed: int = option(1234, "Seed of the preview noise (fixed, so previews are comparable).", min=0, max=2**32 - 1)
    size: int = option(0, "Preview side length in pixels; 0 = data.resolution.", min=0, max=4096)


@dataclass
class SaveSection:
    output_name: str = option("lora", "Base name of the saved adapter files.")
    every_n_steps: int = option(0, "Also save the adapter every N steps; 0 = only at the end.", min=0, max=10_000_000)
    dtype: str = option("fp32", "Precision of the saved adapter weights.", choices=("fp32", "fp16", "bf16"))
    format: str = option(
        "kohya",
        "Key layout of the saved file: 'kohya' (A1111 / Forge / ComfyUI / diffusers all load it) or "
        "'diffusers' (diffusers/PEFT keys; A1111 does not load it). Every save is checked; a file that "
        "does not load completely stops the run with the check's report.",
        choices=("kohya", "diffusers"),
    )
    trigger_words: list = option(
        [], "Words that activate the LoRA, written to the file's metadata (modelspec.trigger_phrase).", item_type=str
    )


@dataclass
class TrainConfig:
    config_version: int = CONFIG_VERSION
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    lora: LoraSection = field(default_factory=LoraSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    sample: SampleSection = field(default_factory=SampleSection)
    save: SaveSection = field(default_factory=SaveSection)


SECTION_NAMES = ("model", "data", "lora", "optim", "train", "sample", "save")
