"""THE schema: every training option, declared once with default, help, choices and bounds."""
from __future__ import annotations

from dataclasses import dataclass, field

from .fields import option

CONFIG_VERSION = 1

FAMILIES = ("auto", "sd15", "sd2", "sd2-v", "sdxl")
OPTIMIZERS = ("adamw8bit", "adamw", "adafactor", "prodigy")
QUANTIZE_CHOICES = ("none", "int8", "nf4")
MEMORY_MODES = ("manual", "auto")
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
        "'builtin:tiny-sd15' / 'builtin:tiny-sd2-v' / 'builtin:tiny-sdxl' for the built-in tiny test models.",
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
    clip_skip: int = option(
        1,
        "Clip skip, counted as in A1111 / kohya: 1 = the text encoder's last layer, 2 = the penultimate "
        "(what anime SD1 models were trained with). SDXL always starts from its penultimate layers, so "
        "2 goes one further back there. Previews and the saved metadata use the same value.",
        min=1, max=12,
    )
    vae_path: str = option(
        "",
        "A separate VAE (diffusers folder with config.json) to use instead of the model's own, e.g. the "
        "fp16-fixed SDXL VAE; empty = the model's VAE.",
        advanced=True,
    )
    vae_precision: str = option(
        "auto",
        "Precision of the frozen VAE: 'fp32' encodes in full precision (SDXL's VAE overflows to NaN in fp16), "
        "'same' uses train.mixed_precision, 'auto' = fp32 for SDXL unless model.vae_path is set, else 'same'.",
        choices=("auto", "fp32", "same"),
        advanced=True,
    )
    # QLoRA-style frozen base (sdlora.models.quantize); the saved adapter is the same either way.
    quantize: str = option(
        "none",
        "Quantize the frozen base (QLoRA): the UNet's and text encoder's linear layers are stored as "
        "bitsandbytes 'int8' (LLM.int8, ~1/4 of fp32) or 'nf4' (4-bit NormalFloat, ~1/8); LoRA trains on top "
        "in fp32. Convolutions and the VAE stay as they are. The saved LoRA loads on the unquantized base.",
        choices=QUANTIZE_CHOICES,
    )
    quantize_compute_dtype: str = option(
        "auto",
        "dtype nf4 layers dequantize to for their matmul (int8 layers compute in int8 and return their "
        "input's dtype); 'auto' = the train.mixed_precision dtype (fp32 when 'no').",
        choices=("auto", "fp32", "bf16", "fp16"),
        advanced=True,
    )


MISSING_CAPTION = ("error", "default", "filename", "empty")
CAPTION_EXTENSIONS = (".txt", ".caption")


@dataclass
class DatasetEntry:
    """One entry of data.datasets: a folder with its own repeats, captions and resolution."""

    path: str = option("", "Folder of images (flat, or kohya-style N_name sub-folders where N = repeats).")
    repeats: int = option(1, "Times each image is seen per epoch (N_name sub-folders use their own N).", min=1, max=10_000)
    caption_extension: str = option(".txt", "Extension of caption side files.", choices=CAPTION_EXTENSIONS)
    trigger_word: str = option("", "Trigger word / class tokens put first in every caption (e.g. 'sks dog').")
    resolution: int = option(0, "Base resolution of this dataset; 0 = data.resolution.", min=0, max=4096)
    missing_caption: str = option(
        "", "Like data.missing_caption for this dataset; '' = use data.missing_caption.",
        choices=("",) + MISSING_CAPTION,
    )
    default_caption: str = option("", "Caption for images without one; '' = data.default_caption.")


@dataclass
class DataSection:
    path: str = option(
        "",
        "Folder of training images with same-name caption files (flat, or kohya-style N_name "
        "sub-folders where N = repeats), or a built-in set: 'builtin:demo-shapes', 'builtin:demo-concept'. Leave empty when data.datasets is used.",
    )
    datasets: list = option(
        [],
        "Several datasets, each a [[data.datasets]] table with path, repeats, caption_extension, "
        "trigger_word, resolution, missing_caption, default_caption. Used instead of data.path.",
        item_type=DatasetEntry,
    )
    repeats: int = option(1, "Times each image in data.path is seen per epoch (N_name sub-folders use N).", min=1, max=10_000)
    resolution: int = option(512, "Base training resolution in pixels (multiple of 8): buckets have area <= this squared.", min=64, max=4096)
    caption_extension: str = option(".txt", "Extension of caption side files.", choices=CAPTION_EXTENSIONS)
    missing_caption: str = option(
        "error",
        "What to do with an image that has no caption file: stop with an error, use "
        "data.default_caption (e.g. the instance prompt), use the file name, or train it with an "
        "empty caption (only when asked).",
        choices=MISSING_CAPTION,
    )
    default_caption: str = option("", "Caption for images without one when missing_caption = 'default'.")
    trigger_word: str = option("", "Trigger word / class tokens put first in every caption unless already there.")
    background: str = option(
        "white", "Background that transparent images (RGBA, LA, palette) are composited on.",
        choices=("white", "black", "gray"), advanced=True,
    )
    shuffle_tags: bool = option(False, "Shuffle the comma-separated tags of each caption every time it is used.")
    keep_tokens: int = option(0, "The first N tags stay in place (not shuffled, never dropped); trigger word included.", min=0, max=255)
    caption_dropout_rate: float = option(0.0, "Chance that a whole caption is replaced by '' (helps CFG).", min=0.0, max=1.0)
    tag_dropout_rate: float = option(0.0, "Chance that each tag (after keep_tokens) is left out.", min=0.0, max=1.0)
    enable_buckets: bool = option(True, "Aspect-ratio buckets: train each image near its own aspect ratio instead of a square crop.")
    min_bucket_side: int = option(0, "Smallest bucket side in pixels; 0 = resolution / 2.", min=0, max=8192, advanced=True)
    max_bucket_side: int = option(0, "Largest bucket side in pixels; 0 = resolution x 2.", min=0, max=8192, advanced=True)
    bucket_step: int = option(64, "Bucket sides are multiples of this (64 is standard).", min=8, max=512, advanced=True)
    no_upscale: bool = option(False, "Never upscale: an image smaller than the base area gets a bucket of its own size.", advanced=True)
    center_crop: bool = option(True, "Center-crop the overhang after resizing (else a random crop per epoch).", advanced=True)
    random_flip: bool = option(False, "Flip images horizontally at random (not for asymmetric subjects).")
    latents: str = option(
        "sample", "Latents from the VAE: 'sample' its distribution (usual) or use its 'deterministic' mean.",
        choices=("sample", "deterministic"), advanced=True,
    )
    cache_latents: str = option(
        "off", "Cache VAE outputs: 'memory', 'disk' (data.cache_dir; reused across runs) or 'off'.",
        choices=("off", "memory", "disk"),
    )
    cache_dir: str = option("", "Folder of the disk latent cache; '' = <SDLORA_HOME>/cache/latents.", advanced=True)
    cache_text_embeddings: bool = option(
        False, "Cache text-encoder outputs per distinct caption (exact with shuffle/dropout; only while the text encoder is frozen)."
    )


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
        False,
        "Also adapt the text encoder's attention (q/k/v/out_proj), with optim.text_encoder_lr. SDXL: both "
        "text encoders (see lora.train_text_encoder_2).",
    )
    train_text_encoder_2: bool = option(
        True,
        "SDXL only: with lora.train_text_encoder, also adapt the second text encoder (OpenCLIP-bigG), with "
        "optim.text_encoder_2_lr. Off = only CLIP-L learns.",
        advanced=True,
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
    text_encoder_2_lr: float = option(
        0.0, "SDXL: learning rate of the second text encoder's LoRA; 0 = optim.text_encoder_lr.", min=0.0, max=10.0,
        advanced=True,
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
    nan_max_consecutive: int = option(
        3,
        "NaN guard: a step whose loss or gradients are not finite is skipped (it still counts as a step); "
        "after this many in a row the run rolls back to the last good saved state and stops with advice.",
        min=1, max=1000, advanced=True,
    )
    # Memory preflight and automatic settings (sdlora.train.memory, memory_auto).
    memory: str = option(
        "manual",
        "'auto': before training, turn on memory savers in this order until the peak-memory estimate fits "
        "train.memory_target_gb: latent + text caching (encoders moved off the GPU), 8-bit AdamW, gradient "
        "checkpointing, an int8 then nf4 base, a smaller batch with more accumulation (same effective "
        "batch). Only savers are turned on; what was chosen is reported. 'manual' uses the settings as given.",
        choices=MEMORY_MODES,
    )
    memory_target_gb: float = option(
        0.0,
        "Memory the run may use, in GB (GiB), for train.memory = 'auto' and the plan's warning; 0 = the "
        "device's free memory (GPU: free VRAM; CPU: available RAM).",
        min=0.0, max=4096.0,
    )
    offload_encoders: bool = option(
        False,
        "Move the VAE and text encoder to the CPU once every latent and caption is cached (CUDA only; needs "
        "data.cache_latents, data.cache_text_embeddings, center crop, no random flip, no caption shuffle or "
        "dropout, a frozen text encoder). They come back to the GPU only for previews.",
        advanced=True,
    )


@dataclass
class SampleSection:
    prompts: list = option(
        [],
        "Preview prompts; empty = no previews. Each may end with kohya-style options for that prompt: "
        "--n negative prompt, --s steps, --l guidance scale, --d seed, --w width, --h height, --sampler name.",
        item_type=str,
    )
    negative_prompt: str = option("", "Negative prompt for every preview (a prompt's --n replaces it).")
    every_n_steps: int = option(0, "Render previews every N steps (0 = off); always after the last step.",
                                min=0, max=10_000_000)
    every_n_epochs: int = option(0, "Render previews after every N epochs (0 = off).", min=0, max=100_000)
    sampler: str = option(
        "default",
        "Scheduler for previews; 'default' is the model's own (what a plain diffusers pipeline uses).",
        choices=("default", "euler", "euler_a", "ddim", "dpm++2m", "dpm++2m_karras", "pndm", "lms"),
    )
    steps: int = option(20, "Denoising steps per preview.", min=1, max=1000)
    guidance_scale: float = option(7.5, "Classifier-free guidance scale.", min=0.0, max=50.0)
    seed: int = option(1234, "Seed of the first preview; prompt i uses seed + i (fixed, so rounds compare).",
                       min=0, max=2**32 - 1)
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
    state_every_n_steps: int = option(
        50,
        "Save the full training state (for `sdlora train --resume`) every N steps; it is also saved when "
        "the run stops or ends. 0 = only at stop and end.",
        min=0, max=10_000_000,
    )
    keep_states: int = option(2, "Keep the last K training states in <run>/state (older ones are deleted).",
                              min=1, max=1000)


@dataclass
class DreamboothSection:
    enabled: bool = option(
        False,
        "DreamBooth mode: images without a caption file are captioned with instance_prompt, and (with "
        "prior_preservation) each batch is paired with class images so the model keeps its idea of the class.",
    )
    instance_prompt: str = option("", "Prompt with a rare identifier for your subject, e.g. 'a photo of sks dog'.")
    class_prompt: str = option("", "The same prompt without the identifier, e.g. 'a photo of a dog'.")
    prior_preservation: bool = option(True, "Train on class images too (prior-preservation loss).")
    prior_loss_weight: float = option(1.0, "Weight of the class (prior) loss: loss = instance + weight x prior.",
                                      min=0.0, max=100.0)
    num_class_images: int = option(100, "Class images to use; missing ones are generated by the base model.",
                                   min=1, max=100_000)
    class_data_dir: str = option(
        "",
        "Folder of class images (regularization images; a same-name .txt is the caption, else class_prompt), "
        "or 'builtin:demo-world'. Empty: generated by the base model into a cache folder under SDLORA_HOME, "
        "reused while model, prompt and size match.",
    )
    class_negative_prompt: str = option("", "Negative prompt for generating class images.", advanced=True)
    class_generation_steps: int = option(30, "Denoising steps per generated class image.", min=1, max=1000,
                                         advanced=True)
    class_guidance_scale: float = option(7.5, "Guidance scale for generated class images.", min=0.0, max=50.0,
                                         advanced=True)


@dataclass
class ValidationSection:
    path: str = option(
        "",
        "Folder of a few held-out images with captions; its loss (fixed noise and timesteps) is logged so you "
        "can see when training stops improving. Empty = off.",
    )
    every_n_steps: int = option(50, "Evaluate the validation loss every N steps (and after the last step).",
                                min=1, max=10_000_000)
    seed: int = option(0, "Seed of the fixed validation noise.", min=0, max=2**32 - 1, advanced=True)
    timesteps: int = option(4, "Timesteps per image, spread evenly over the schedule.", min=1, max=100,
                            advanced=True)


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
    dreambooth: DreamboothSection = field(default_factory=DreamboothSection)
    validation: ValidationSection = field(default_factory=ValidationSection)


SECTION_NAMES = ("model", "data", "lora", "optim", "train", "sample", "save", "dreambooth", "validation")
