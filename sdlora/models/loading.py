"""Find and load a base model: builtin tiny models, diffusers folders, single-file checkpoints
(original LDM layout, read offline), hub ids (cache only offline)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .family import FAMILY_NAMES, detect_family, prediction_type_of

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = {"tiny-sd15": "sd15", "tiny-sd2-v": "sd2-v", "tiny-sdxl": "sdxl"}
# Pretrained models shipped inside the package (see sdlora/demo/models/), read in place.
PACKAGED_MODELS = {"shapes-sd15": Path(__file__).resolve().parent.parent / "demo" / "models" / "shapes-sd15"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def sdlora_home() -> Path:
    """Where sdlora keeps built-in models, demo data and caches (SDLORA_HOME overrides)."""
    return Path(os.environ.get("SDLORA_HOME", Path.home() / ".cache" / "sdlora"))


def builtin_model_path(name: str) -> Path:
    """Path of a built-in model: a packaged pretrained one, or a tiny random one built on first use
    (deterministic, seed 0)."""
    from ..fsutil import atomic_dir
    from .tiny import save_tiny_model

    if name in PACKAGED_MODELS:
        return _packaged_model(name)
    if name not in BUILTIN_MODELS:
        raise ModelError(
            f"Unknown built-in model '{BUILTIN_PREFIX}{name}'; built-in models are "
            + ", ".join(BUILTIN_PREFIX + n for n in [*PACKAGED_MODELS, *BUILTIN_MODELS])
            + "."
        )
    folder = sdlora_home() / "models" / name
    if not (folder / "model_index.json").is_file():
        with atomic_dir(folder) as tmp:
            save_tiny_model(tmp, BUILTIN_MODELS[name])
    return folder


def _packaged_model(name: str) -> Path:
    folder = PACKAGED_MODELS[name]
    if not (folder / "model_index.json").is_file():
        raise ModelError(
            f"The built-in model '{BUILTIN_PREFIX}{name}' is missing from this installation ({folder}). "
            "Reinstall sdlora (its package data holds the model), or rebuild it with "
            f"`python scripts/pretrain_shapes.py --out {folder}`."
        )
    return folder


def resolve_model_path(path: str, allow_pickle: bool = False) -> Path:
    """Turn model.path into a local diffusers folder or single-file checkpoint, or raise ModelError
    saying what to do. Pickle checkpoints (.ckpt) pass only with allow_pickle (model.allow_pickle)."""
    from .single_file.read import CONVERT_HINT, PICKLE_SUFFIXES

    if not path:
        raise ModelError(
            "model.path is empty: set it to a diffusers folder or a .safetensors checkpoint "
            "(or 'builtin:tiny-sd15' to try sdlora)."
        )
    if path.startswith(BUILTIN_PREFIX):
        return builtin_model_path(path[len(BUILTIN_PREFIX) :])
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "model_index.json").is_file():
            raise ModelError(
                f"{local} is a folder but not a diffusers model (no model_index.json). Point model.path at "
                "the folder that contains model_index.json, unet/, vae/ and text_encoder/, or at a "
                ".safetensors checkpoint."
            )
        return local
    if local.is_file():
        suffix = local.suffix.lower()
        if suffix == ".safetensors":
            return local
        if suffix in PICKLE_SUFFIXES:
            if allow_pickle:
                return local
            raise ModelError(
                f"{local} is a pickle checkpoint ({suffix}), which can run code when loaded: {CONVERT_HINT}. "
                f"To convert: `sdlora convert {local} -o {local.with_suffix('.safetensors')} --allow-pickle`."
            )
        raise ModelError(
            f"{local} is not a model sdlora can read: point model.path at a diffusers folder, a .safetensors "
            "single-file checkpoint or (with model.allow_pickle) a .ckpt."
        )
    if _HUB_ID.match(path) and not path.startswith((".", "/", "~")):
        return _hub_snapshot(path)
    raise ModelError(f"Model path not found: {path}. Point model.path at a diffusers folder or a .safetensors file.")


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(repo_id, local_files_only=offline))
    except Exception as exc:  # the hub client raises several types for "not cached" / "no network"
        raise ModelError(
            f"Could not get '{repo_id}' from the model hub ({type(exc).__name__}): it is not in the local cache"
            + (" and HF_HUB_OFFLINE is set" if offline else " and the hub could not be reached")
            + ". Download the model on a machine with internet access and point model.path at the local "
            "diffusers folder."
        ) from None


@dataclass
class BaseModel:
    """The parts of a Stable Diffusion model that training needs."""

    folder: Path
    family: str
    prediction_type: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    extra: dict = field(default_factory=dict)
    text_encoder_2: Any = None  # SDXL's OpenCLIP-bigG (with projection); None for SD1 / SD2
    tokenizer_2: Any = None

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def text_encoders(self) -> list:
        return [e for e in (self.text_encoder, self.text_encoder_2) if e is not None]

    @property
    def tokenizers(self) -> list:
        return [t for t in (self.tokenizer, self.tokenizer_2) if t is not None]

    @property
    def frozen_parts(self) -> list:
        """Every network of the model (what is frozen before LoRA is added)."""
        return [self.unet, self.vae, *self.text_encoders]


def load_base_model(model_cfg) -> BaseModel:
    """Load the model named by the config's [model] section, with family and prediction type."""
    folder = resolve_model_path(model_cfg.path, model_cfg.allow_pickle)
    if folder.is_file():
        return _load_single_file_model(folder, model_cfg)
    family = detect_family(folder) if model_cfg.family == "auto" else _checked_family(folder, model_cfg.family)
    prediction_type = prediction_type_of(folder) if model_cfg.prediction_type == "auto" else model_cfg.prediction_type
    base = _load_sd_components(folder, family, prediction_type, in_memory=model_cfg.quantize != "none")
    return _with_vae_override(base, model_cfg.vae_path)


def _with_vae_override(base: BaseModel, vae_path: str) -> BaseModel:
    """model.vae_path: a separate VAE (e.g. the fp16-fixed SDXL VAE) replaces the model's own."""
    if not vae_path:
        return base
    from diffusers import AutoencoderKL

    folder = Path(vae_path).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelError(
            f"model.vae_path = {vae_path} is not a diffusers VAE folder (no config.json). Point it at a folder "
            "with config.json and diffusion_pytorch_model.safetensors (e.g. madebyollin/sdxl-vae-fp16-fix), "
            "or leave it empty to use the model's own VAE."
        )
    try:
        vae = AutoencoderKL.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ModelError(f"Could not load the VAE in {folder}: {exc}") from None
    if vae.config.latent_channels != base.vae.config.latent_channels:
        raise ModelError(
            f"model.vae_path = {vae_path} makes {vae.config.latent_channels}-channel latents but the model's UNet "
            f"expects {base.vae.config.latent_channels}: use a VAE of the same family."
        )
    base.vae = vae
    return base


def _load_single_file_model(path: Path, model_cfg) -> BaseModel:
    """A single-file checkpoint: family from its keys, components built offline (models.single_file)."""
    from diffusers import DDPMScheduler

    from .single_file import load_single_file

    loaded = load_single_file(path, model_cfg.family, model_cfg.prediction_type, allow_pickle=model_cfg.allow_pickle)
    parts = loaded.components
    noise_scheduler = DDPMScheduler.from_config(parts["scheduler"].config)
    noise_scheduler.register_to_config(prediction_type=loaded.prediction_type)
    base = BaseModel(
        path, loaded.family, loaded.prediction_type, parts["unet"], parts["vae"], parts["text_encoder"],
        parts["tokenizer"], noise_scheduler, extra={"scheduler": parts["scheduler"]},
        text_encoder_2=parts.get("text_encoder_2"), tokenizer_2=parts.get("tokenizer_2"),
    )
    return _with_vae_override(base, model_cfg.vae_path)


def _architecture(family: str) -> str:
    return "sd2" if family.startswith("sd2") else family  # SD2 epsilon and 768-v share the network


def _checked_family(folder: Path, family: str) -> str:
    """An explicit model.family must fit the model's network: a wrong one trains the wrong layers
    or produces a LoRA tagged for the wrong base, so it is an error, not a warning."""
    detected = detect_family(folder)
    if _architecture(detected) != _architecture(family):
        raise ModelError(
            f"model.family = '{family}' but {folder} is a {FAMILY_NAMES.get(detected, detected)} model "
            f"('{detected}'). Set model.family = 'auto' (or '{detected}'), or pick a model of that family."
        )
    return family


def _load_sd_components(folder: Path, family: str, prediction_type: str, in_memory: bool = False) -> BaseModel:
    """`in_memory` reads the weight files instead of mapping them: model.quantize drops the full-precision
    linear weights, and pages of a mapped file would stay resident (counted in RSS) after that."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    second = {}
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", disable_mmap=in_memory)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
        text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", disable_mmap=in_memory)
        tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        if family == "sdxl":  # OpenCLIP-bigG: its projected pooled output conditions the UNet too
            second["text_encoder_2"] = CLIPTextModelWithProjection.from_pretrained(
                folder, subfolder="text_encoder_2", disable_mmap=in_memory
            )
            second["tokenizer_2"] = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2")
        noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    except (OSError, ValueError) as exc:
        raise ModelError(f"Could not load the model in {folder}: {exc}") from None
    noise_scheduler.register_to_config(prediction_type=prediction_type)
    return BaseModel(folder, family, prediction_type, unet, vae, text_encoder, tokenizer, noise_scheduler, **second)
