"""Write a diffusers model as one .safetensors file in the original (LDM) layout.

The file carries, besides the weights, modelspec metadata (what A1111 / civitai show) and each
component's diffusers config as `sdlora.config.<component>` JSON, so sdlora reads back exactly
the model it wrote even where shapes cannot tell the config (tiny or non-standard models).
"""
from __future__ import annotations

import json
from pathlib import Path

from ...errors import ModelError
from ...fsutil import atomic_path
from .keys import base_family, to_ldm_state_dict
from .read import META_PREFIX

FORMAT_VERSION = "1"
ARCHITECTURES = {
    "sd15": "stable-diffusion-v1",
    "sd2": "stable-diffusion-v2-512",
    "sd2-v": "stable-diffusion-v2-768-v",
    "sdxl": "stable-diffusion-xl-v1-base",
}
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def family_of_components(components: dict) -> str:
    """sd15 / sd2 / sd2-v / sdxl from live components (same signals as models.family)."""
    if components.get("text_encoder_2") is not None:
        return "sdxl"
    if components["text_encoder"].config.hidden_act == "gelu":
        scheduler = components.get("scheduler")
        v = scheduler is not None and scheduler.config.get("prediction_type") == "v_prediction"
        return "sd2-v" if v else "sd2"
    return "sd15"


def _config_json(module, name: str) -> str:
    config = dict(module.config) if name in ("unet", "vae", "scheduler") else module.config.to_diff_dict()
    if name == "scheduler":
        config["_class_name"] = type(module).__name__
    return json.dumps(config, sort_keys=True, default=list)


def single_file_metadata(components: dict, family: str, title: str = "") -> dict:
    prediction = "v_prediction" if family == "sd2-v" else "epsilon"
    scheduler = components.get("scheduler")
    if scheduler is not None:
        prediction = scheduler.config.get("prediction_type", prediction)
    metadata = {
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": ARCHITECTURES[family],
        "modelspec.implementation": "diffusers",
        "modelspec.prediction_type": "v" if prediction == "v_prediction" else "epsilon",
        "modelspec.title": title or "sdlora checkpoint",
        META_PREFIX + "format_version": FORMAT_VERSION,
        META_PREFIX + "family": family,
        META_PREFIX + "prediction_type": prediction,
    }
    for name in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler"):
        if components.get(name) is not None:
            metadata[f"{META_PREFIX}config.{name}"] = _config_json(components[name], name)
    return metadata


def write_single_file(pipeline_or_components, path, family: str | None = None, dtype: str | None = None,
                      embed_configs: bool = True, title: str = "") -> Path:
    """Save a diffusers pipeline (or its components dict) as one original-layout .safetensors file.

    dtype: None keeps each tensor's dtype; 'fp32' / 'fp16' / 'bf16' casts floating tensors.
    embed_configs=False leaves out the sdlora.config.* metadata (like a community file)."""
    import torch
    from safetensors.torch import save_file

    components = getattr(pipeline_or_components, "components", pipeline_or_components)
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ModelError(f"{path}: a single-file checkpoint is written as .safetensors.")
    family = family or family_of_components(components)
    if family not in ARCHITECTURES:
        raise ModelError(f"Unknown model family {family!r}; expected one of {', '.join(ARCHITECTURES)}.")
    if base_family(family) != base_family(family_of_components(components)):
        raise ModelError(f"The model's components are {family_of_components(components)}, not {family}.")
    if dtype is not None and dtype not in DTYPES:
        raise ModelError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}.")
    state = to_ldm_state_dict(components, family)
    cast = getattr(torch, DTYPES[dtype]) if dtype else None
    tensors = {
        k: (v.to(cast) if cast is not None and v.is_floating_point() else v).detach().contiguous()
        for k, v in state.items()
    }
    metadata = single_file_metadata(components, family, title)
    if not embed_configs:
        metadata = {k: v for k, v in metadata.items() if not k.startswith(META_PREFIX + "config.")}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path
