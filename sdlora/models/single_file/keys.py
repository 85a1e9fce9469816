"""Diffusers state dicts -> the original single-file (LDM/SGM) layout A1111 and ComfyUI load.

Reading goes the other way through diffusers' own converters (see read.py); this module only
writes. UNet module names come from sdlora.export.ldm_names (the mapping the LoRA exporter uses),
so checkpoints and LoRAs agree on every block number.
"""
from __future__ import annotations

import re

from ...errors import ModelError
from ...export.ldm_names import clip_to_openclip, unet_to_ldm, with_text_model

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# Where each family keeps its text encoders, and whether each is OpenAI CLIP or OpenCLIP.
TEXT_ENCODER_PREFIXES = {
    "sd15": {"text_encoder": ("cond_stage_model.transformer.", "clip")},
    "sd2": {"text_encoder": ("cond_stage_model.", "openclip")},
    "sdxl": {
        "text_encoder": ("conditioner.embedders.0.transformer.", "clip"),
        "text_encoder_2": ("conditioner.embedders.1.", "openclip"),
    },
}


def base_family(family: str) -> str:
    """sd2-v keeps its weights exactly like sd2: only the scheduler differs."""
    return "sd2" if family.startswith("sd2") else family


def detect_family_from_keys(keys) -> str | None:
    """sd15 / sd2 / sdxl from the text-encoder key names; None when it is no SD checkpoint.
    (SD2 epsilon vs 768-v cannot be told from weights: see read.resolve_prediction_type.)"""
    keys = set(keys)
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        return None
    if any(k.startswith("conditioner.embedders.1.model.transformer.resblocks.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.transformer.resblocks.") for k in keys):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd15"
    return None


# ---------------------------------------------------------------- UNet


def unet_to_ldm_state_dict(unet) -> dict:
    config = unet.config
    layers = config.layers_per_block
    if not isinstance(layers, int):
        if len(set(layers)) != 1:
            raise ModelError("A UNet with different layers per block has no single-file (LDM) layout.")
        layers = layers[0]
    up_has_attention = tuple("CrossAttn" in t for t in config.up_block_types)
    out = {}
    for key, tensor in unet.state_dict().items():
        module, param = key.rsplit(".", 1)
        ldm = unet_to_ldm(module, layers, up_has_attention)
        if ldm is None:
            raise ModelError(f"UNet weight {key} has no name in the single-file (LDM) layout.")
        out[f"{UNET_PREFIX}{ldm}.{param}"] = tensor
    return out


# ---------------------------------------------------------------- VAE

_VAE_RESNET = re.compile(r"^(encoder|decoder)\.(down|up)_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$")
_VAE_SAMPLER = re.compile(r"^(encoder|decoder)\.(down|up)_blocks\.(\d+)\.(down|up)samplers\.0\.conv\.(.+)$")
_VAE_MID_RESNET = re.compile(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$")
_VAE_MID_ATTN = re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.+)$")
_VAE_ATTN_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_TOP = {"conv_norm_out": "norm_out"}


def _vae_key(key: str, num_up: int) -> str | None:
    if m := _VAE_RESNET.match(key):
        side, kind, block, layer, rest = m.groups()
        block = int(block) if kind == "down" else num_up - 1 - int(block)  # LDM numbers up blocks bottom-up
        return f"{side}.{kind}.{block}.block.{layer}.{rest.replace('conv_shortcut', 'nin_shortcut')}"
    if m := _VAE_SAMPLER.match(key):
        side, kind, block, _, param = m.groups()
        block = int(block) if kind == "down" else num_up - 1 - int(block)
        return f"{side}.{kind}.{block}.{kind}sample.conv.{param}"
    if m := _VAE_MID_RESNET.match(key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := _VAE_MID_ATTN.match(key):
        module, param = m[2].rsplit(".", 1)
        return f"{m[1]}.mid.attn_1.{_VAE_ATTN_PARTS[module]}.{param}" if module in _VAE_ATTN_PARTS else None
    side, _, rest = key.partition(".")
    module, _, param = rest.rpartition(".")
    if side in ("encoder", "decoder") and module in ("conv_in", "conv_out", "conv_norm_out"):
        return f"{side}.{_VAE_TOP.get(module, module)}.{param}"
    if module == "" and side in ("quant_conv", "post_quant_conv"):
        return key
    return None


def vae_to_ldm_state_dict(vae) -> dict:
    num_up = len(vae.config.up_block_types)
    out = {}
    for key, tensor in vae.state_dict().items():
        ldm = _vae_key(key, num_up)
        if ldm is None:
            raise ModelError(f"VAE weight {key} has no name in the single-file (LDM) layout.")
        if ".mid.attn_1." in ldm and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # LDM's VAE attention uses 1x1 convolutions
        out[VAE_PREFIX + ldm] = tensor
    return out


# ---------------------------------------------------------------- text encoders


def clip_to_ldm_state_dict(text_encoder, prefix: str) -> dict:
    """OpenAI CLIP (SD1, SDXL's first): transformers' names with `text_model.` under the prefix."""
    return {prefix + with_text_model(k): v for k, v in text_encoder.state_dict().items()}


_OPENCLIP_TOP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_QKV = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")


def openclip_to_ldm_state_dict(text_encoder, prefix: str, pad_layer: bool) -> dict:
    """OpenCLIP (SD2, SDXL's second): fused q/k/v `in_proj`, `resblocks`, transposed projection.

    pad_layer: SD2 files hold 24 layers and run the penultimate; diffusers drops the unused last
    one. Writing it back, the last real layer is repeated as that unused 24th layer, so A1111 and
    ComfyUI (which skip the file's last layer) run exactly the layers diffusers runs."""
    out, qkv = {}, {}
    for key, tensor in text_encoder.state_dict().items():
        key = key.removeprefix("text_model.")
        if key in _OPENCLIP_TOP:
            out[prefix + "model." + _OPENCLIP_TOP[key]] = tensor
        elif key == "text_projection.weight":
            out[prefix + "model.text_projection"] = tensor.T.contiguous()
        elif m := _QKV.match(key):
            qkv[(int(m[1]), m[3], m[2])] = tensor
        else:
            module, param = key.rsplit(".", 1)
            ldm = clip_to_openclip(module)
            if ldm is None:
                raise ModelError(f"Text encoder weight {key} has no name in the OpenCLIP layout.")
            out[f"{prefix}{ldm}.{param}"] = tensor
    import torch

    layers = text_encoder.config.num_hidden_layers
    for layer in range(layers):
        for param in ("weight", "bias"):
            fused = torch.cat([qkv[(layer, param, p)] for p in "qkv"])
            out[f"{prefix}model.transformer.resblocks.{layer}.attn.in_proj_{param}"] = fused
    if pad_layer:
        last = f"{prefix}model.transformer.resblocks.{layers - 1}."
        pad = f"{prefix}model.transformer.resblocks.{layers}."
        out.update({pad + k[len(last):]: v.clone() for k, v in list(out.items()) if k.startswith(last)})
        hidden = text_encoder.config.hidden_size
        # SD2 files carry OpenCLIP's projection although SD2 never uses it; identity keeps the layout.
        out[prefix + "model.text_projection"] = torch.eye(hidden, dtype=out[pad + "ln_1.weight"].dtype)
    return out


def to_ldm_state_dict(components: dict, family: str) -> dict:
    """All weights of a pipeline's components under their single-file names."""
    family = base_family(family)
    state = unet_to_ldm_state_dict(components["unet"])
    state.update(vae_to_ldm_state_dict(components["vae"]))
    for name, (prefix, kind) in TEXT_ENCODER_PREFIXES[family].items():
        if components.get(name) is None:
            raise ModelError(f"A {family} checkpoint needs a {name}; the model has none.")
        if kind == "clip":
            state.update(clip_to_ldm_state_dict(components[name], prefix))
        else:
            state.update(openclip_to_ldm_state_dict(components[name], prefix, pad_layer=family == "sd2"))
    return state
