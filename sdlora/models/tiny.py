"""Tiny random-weight SD1.5-, SD2-v- and SDXL-shaped pipelines for tests and demos, plus a
full-size random SD1.5 UNet for speed and memory benchmarks.

Shapes follow the real families (same block types, text-encoder activation, conditioning), with
tiny widths; the VAE keeps the real 8x downsampling so latent sizes match real models.
"""
from __future__ import annotations

from pathlib import Path

from .tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, clip_tokenizer

TINY_FAMILIES = ("sd15", "sd2-v", "sdxl")
TINY_RESOLUTION = 64
_SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def _text_encoder_config(hidden_act: str, projection_dim: int | None = None):
    from transformers import CLIPTextConfig

    extra = {"projection_dim": projection_dim} if projection_dim else {}
    return CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=hidden_act,  # quick_gelu = OpenAI CLIP (SD1), gelu = OpenCLIP (SD2, SDXL's second)
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID,
        **extra,
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        latent_channels=4,
        sample_size=TINY_RESOLUTION,
    )


def _sd_unet(family: str):
    from diffusers import UNet2DConditionModel

    sd2 = family == "sd2-v"
    return UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4) if sd2 else 8,
        use_linear_projection=sd2,  # SD2 uses Linear proj_in/out, SD1 1x1 convs
        norm_num_groups=16,
    )


def _sdxl_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=TINY_RESOLUTION // 8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 size/crop ids + pooled text (32)
        cross_attention_dim=64,  # CLIP-L hidden (32) + OpenCLIP-G hidden (32)
        norm_num_groups=16,
    )


def build_tiny_pipeline(family: str = "sd15", seed: int = 0):
    """A complete diffusers pipeline of the given family with seeded random weights."""
    import torch
    from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if family not in TINY_FAMILIES:
        raise ValueError(f"tiny family must be one of {TINY_FAMILIES}, got {family!r}")
    torch.manual_seed(seed)
    if family == "sdxl":
        unet = _sdxl_unet()
        vae = _vae()
        text_encoder = CLIPTextModel(_text_encoder_config("quick_gelu"))
        text_encoder_2 = CLIPTextModelWithProjection(_text_encoder_config("gelu", projection_dim=32))
        scheduler = EulerDiscreteScheduler(**_SD_BETAS, timestep_spacing="leading", steps_offset=1)
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=clip_tokenizer(),
            tokenizer_2=clip_tokenizer(pad_token="!"),
            unet=unet,
            scheduler=scheduler,
        )
    sd2 = family == "sd2-v"
    unet = _sd_unet(family)
    vae = _vae()
    text_encoder = CLIPTextModel(_text_encoder_config("gelu" if sd2 else "quick_gelu"))
    scheduler = DDIMScheduler(
        **_SD_BETAS,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if sd2 else "epsilon",
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(pad_token="!" if sd2 else "<|endoftext|>"),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_model(folder: str | Path, family: str = "sd15", seed: int = 0) -> Path:
    """Build a tiny pipeline and save it as a diffusers folder (safetensors weights)."""
    folder = Path(folder)
    build_tiny_pipeline(family, seed).save_pretrained(folder, safe_serialization=True)
    return folder


def build_full_sd15_unet(seed: int = 0):
    """The real SD1.5 UNet architecture (859.5M parameters) with random weights, for benchmarks."""
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
