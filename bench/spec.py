"""What both benchmark loops share (Spec), the benchmark models and the synthetic dataset."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # sdlora's default 'attn' targets
SD15_FOLDER_NAME = "bench-sd15-full"
SDXL_FOLDER_NAME = "bench-sdxl-full"
CAPTION = "a photo of sks dog, outdoors"
# Dense bf16 tensor-core peaks (TFLOP/s, without sparsity) for the MFU estimate; --peak-tflops overrides.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
                    "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
                    "RTX 4090": 165.0, "RTX 3090": 71.0}
DEFAULTS = {  # model -> (resolution, batch size, rank, warm-up steps, timed steps)
    "tiny": (64, 4, 4, 3, 20),
    "tiny-sdxl": (64, 4, 4, 3, 20),
    "sd15": (512, 1, 16, 2, 3),
    "sdxl": (1024, 1, 16, 2, 5),
}


@dataclass
class Spec:
    """Everything both loops share; sent to each worker."""

    model: str
    folder: str
    data: str
    resolution: int
    batch_size: int
    rank: int
    optimizer: str
    checkpointing: bool
    cache: bool
    precision: str
    attention: str
    device: str
    seed: int
    count_flops: bool
    quantize: str  # sdlora only: model.quantize
    memory_target: float  # sdlora only: > 0 runs train.memory = 'auto' with this train.memory_target_gb
    threads: int  # torch intra-op threads per worker; 0 = torch's default (all cores)
    run_dir: str


def sd15_full_folder() -> Path:
    """A diffusers folder with SD1.5's real shapes and random weights (UNet 860M, VAE, CLIP-L)."""
    from sdlora.models.loading import sdlora_home

    folder = sdlora_home() / "models" / SD15_FOLDER_NAME
    if (folder / "model_index.json").is_file():
        return folder
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdlora.fsutil import atomic_dir
    from sdlora.models.tiny import build_full_sd15_unet
    from sdlora.models.tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, clip_tokenizer

    print(f"building full-size random SD1.5 into {folder} (once) ...", flush=True)
    unet = build_full_sd15_unet(seed=0)
    torch.manual_seed(1)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return folder


def sdxl_modules(seed: int = 0) -> dict:
    """SDXL base's real architecture (UNet 2.57B, CLIP-L, OpenCLIP-bigG, VAE) with random weights,
    from the configs sdlora ships for reading SDXL single files."""
    import diffusers
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sdlora.models.single_file.configs import shipped_configs
    from sdlora.models.tokenizer import clip_tokenizer

    configs = shipped_configs("sdxl")
    scheduler_config = dict(configs["scheduler"])
    scheduler_class = getattr(diffusers, scheduler_config.pop("_class_name"))
    torch.manual_seed(seed)
    return dict(
        unet=UNet2DConditionModel.from_config(configs["unet"]), vae=AutoencoderKL.from_config(configs["vae"]),
        text_encoder=CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_encoder_2"])),
        tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer(pad_token="!"),
        scheduler=scheduler_class.from_config(scheduler_config),
    )


def sdxl_full_folder() -> Path:
    """A diffusers folder of full-size random SDXL, saved in fp16 (about 7 GB; built once, ~14 GB RAM)."""
    from sdlora.models.loading import sdlora_home

    folder = sdlora_home() / "models" / SDXL_FOLDER_NAME
    if (folder / "model_index.json").is_file():
        return folder
    import torch
    from diffusers import StableDiffusionXLPipeline

    from sdlora.fsutil import atomic_dir

    print(f"building full-size random SDXL into {folder} (once) ...", flush=True)
    pipe = StableDiffusionXLPipeline(**sdxl_modules())
    pipe.to(torch.float16)  # half the disk; sdlora loads it like any fp16 checkpoint
    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return folder


def model_folder(model: str) -> str:
    from sdlora.models.loading import builtin_model_path

    if model == "tiny":
        return str(builtin_model_path("tiny-sd15"))
    if model == "tiny-sdxl":
        return str(builtin_model_path("tiny-sdxl"))
    if model == "sdxl":
        return str(sdxl_full_folder())
    return str(sd15_full_folder())


def make_dataset(folder: Path, count: int, side: int) -> None:
    """`count` smooth random RGB images of side x side with one caption each (one batch per epoch)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        coarse = rng.integers(0, 256, (max(side // 16, 2), max(side // 16, 2), 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(CAPTION)
