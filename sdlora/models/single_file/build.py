"""Build diffusers / transformers modules from configs and fill them with converted weights.

Modules are created without allocating weights (accelerate's init_empty_weights) and take the
file's tensors directly; loading is strict, so a file that does not fit its config is an error,
never a half-random model.
"""
from __future__ import annotations

import types

import torch

from ...errors import ModelError
from ..tokenizer import clip_tokenizer
from .keys import TEXT_ENCODER_PREFIXES, base_family

_HIDDEN = ("_class_name", "_diffusers_version", "_name_or_path", "transformers_version", "architectures", "model_type")


def _clean(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in _HIDDEN and not k.startswith("_")}


def _fill(model, weights: dict, name: str, torch_dtype=None):
    # Fresh copies: tensors sliced out of the file's buffer can sit at unaligned addresses, which
    # sends CPU kernels down other paths (SDXL UNet outputs moved by 7e-7 with identical weights).
    weights = {k: v.clone(memory_format=torch.contiguous_format) for k, v in weights.items()}
    try:
        model.load_state_dict(weights, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelError(f"The checkpoint's {name} does not fit its config: {str(exc)[:600]}") from None
    if torch_dtype is not None:
        model.to(torch_dtype)
    return model.eval()


def _empty(build, name: str):
    from accelerate import init_empty_weights

    try:
        with init_empty_weights(include_buffers=False):
            return build()
    except (ValueError, TypeError, AssertionError) as exc:
        raise ModelError(f"Cannot build the checkpoint's {name} from its config: {exc}") from None


def build_unet(state: dict, config: dict, torch_dtype=None):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = _empty(lambda: UNet2DConditionModel.from_config(_clean(config)), "UNet")
    return _fill(unet, convert_ldm_unet_checkpoint(state, dict(unet.config)), "UNet", torch_dtype)


def build_vae(state: dict, config: dict, torch_dtype=None):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae = _empty(lambda: AutoencoderKL.from_config(_clean(config)), "VAE")
    return _fill(vae, convert_ldm_vae_checkpoint(state, dict(vae.config)), "VAE", torch_dtype)


def build_text_encoder(state: dict, config: dict, prefix: str, kind: str, family: str, with_projection: bool,
                       torch_dtype=None):
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_open_clip_checkpoint,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    text_config = CLIPTextConfig(**_clean(config))
    model = _empty(lambda: model_class(text_config), "text encoder")
    if kind == "clip":
        own = {k: v for k, v in state.items() if k.startswith(prefix) and not k.endswith("position_ids")}
        weights = convert_ldm_clip_checkpoint(own, remove_prefix=prefix)
    else:
        own = {k: v for k, v in state.items() if k.startswith(prefix + "model.")}
        if base_family(family) == "sd2":  # SD2 runs the penultimate layer: drop the file's last one
            layers = {int(k.split(".")[4]) for k in own if ".transformer.resblocks." in k}
            last = f"{prefix}model.transformer.resblocks.{max(layers)}."
            own = {k: v for k, v in own.items() if not k.startswith(last)}
            own.pop(prefix + "model.text_projection", None)  # SD2 never projects
        own = {k: v for k, v in own.items() if not k.endswith("logit_scale")}
        weights = convert_open_clip_checkpoint(types.SimpleNamespace(config=text_config), own, prefix=prefix + "model.")
    if not hasattr(model, "text_model"):  # transformers >= 5 flattened CLIPTextModel
        weights = {k.removeprefix("text_model."): v for k, v in weights.items()}
    return _fill(model, weights, f"text encoder ({prefix}*)", torch_dtype)


def build_scheduler(config: dict):
    import diffusers

    class_name = config.get("_class_name", "DDIMScheduler")
    scheduler_class = getattr(diffusers, class_name, None)
    if scheduler_class is None or not class_name.endswith("Scheduler"):
        raise ModelError(f"Unknown scheduler class {class_name!r} in the checkpoint's config.")
    return scheduler_class.from_config(_clean(config))


def build_components(state: dict, family: str, configs: dict, torch_dtype=None) -> dict:
    """{unet, vae, text_encoder, tokenizer, scheduler[, text_encoder_2, tokenizer_2]}."""
    components = {
        "unet": build_unet(state, configs["unet"], torch_dtype),
        "vae": build_vae(state, configs["vae"], torch_dtype),
        "scheduler": build_scheduler(configs["scheduler"]),
    }
    for name, (prefix, kind) in TEXT_ENCODER_PREFIXES[base_family(family)].items():
        components[name] = build_text_encoder(
            state, configs[name], prefix, kind, family, with_projection=name == "text_encoder_2", torch_dtype=torch_dtype
        )
    # OpenCLIP (SD2, SDXL's second encoder) pads with '!' (id 0), OpenAI CLIP with its end token.
    if family == "sdxl":
        components["tokenizer"], components["tokenizer_2"] = clip_tokenizer(), clip_tokenizer(pad_token="!")
    else:
        components["tokenizer"] = clip_tokenizer(pad_token="!" if base_family(family) == "sd2" else "<|endoftext|>")
    return components
