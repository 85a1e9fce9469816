"""The adapter as a flat state dict (diffusers/PEFT layout) and its atomic save."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..fsutil import atomic_path
from .inject import ADAPTER_NAME

SAVE_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _module_lora_state(module):
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(module, adapter_name=ADAPTER_NAME, save_embedding_layers=False))


def _adapter_metadata(module) -> dict:
    config = module.peft_config[ADAPTER_NAME]
    return {
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "target_modules": sorted(config.target_modules),
        "lora_dropout": config.lora_dropout,
    }


def _has_lora(module) -> bool:
    return ADAPTER_NAME in getattr(module, "peft_config", {})


def save_adapter(base, path: Path, dtype: str = "fp32") -> Path:
    """Write the adapter of `base` as one .safetensors file in diffusers layout, atomically."""
    import torch
    from diffusers import StableDiffusionPipeline

    torch_dtype = getattr(torch, SAVE_DTYPES[dtype])

    def prepared(state):
        return {k: v.detach().to("cpu", torch_dtype).contiguous() for k, v in state.items()}

    kwargs = {
        "unet_lora_layers": prepared(_module_lora_state(base.unet)),
        "unet_lora_adapter_metadata": _adapter_metadata(base.unet),
    }
    if _has_lora(base.text_encoder):
        kwargs["text_encoder_lora_layers"] = prepared(_module_lora_state(base.text_encoder))
        kwargs["text_encoder_lora_adapter_metadata"] = _adapter_metadata(base.text_encoder)
    path = Path(path)
    with atomic_path(path) as tmp:
        scratch = Path(tempfile.mkdtemp(dir=path.parent, prefix=".save-"))
        try:
            StableDiffusionPipeline.save_lora_weights(scratch, weight_name="adapter.safetensors", **kwargs)
            shutil.move(scratch / "adapter.safetensors", tmp)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return path
