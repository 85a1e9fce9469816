"""A1111's LoRA key lookup (extensions-builtin/Lora, as described in docs FORMATS.md) run against a
model's module names in the LDM/compvis naming A1111 holds them in.

Per key, in order: diffusers->compvis name conversion, the model's layer mapping, the same with
`_[qkv]_proj` stripped (OpenCLIP's fused attention), `lora_unet` -> `diffusion_model`,
`lora_te1_text_model` -> `0_transformer_text_model` / `transformer_text_model`. Keys matching no
layer are dropped silently by A1111; OpenCLIP q/k/v apply only when q, k, v and out are all there.
"""
from __future__ import annotations

import functools
import re

from .ldm_names import clip_to_openai, clip_to_openclip, unet_to_ldm
from .shapes import ModelShape, meta_components, unet_layout

_RESNET_SUFFIX = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0", "norm2": "out_layers_0",
                  "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}
_X_PROJ = re.compile(r"(.*)_([qkv]_proj)$")


def _openclip_part(rest: str) -> str:
    return rest.replace("mlp_fc1", "mlp_c_fc").replace("mlp_fc2", "mlp_c_proj").replace("self_attn", "attn")


def _unet_block_name(name: str) -> str | None:
    """A1111's fixed diffusers->compvis UNet renames (they assume 2 layers per block, as real SD has)."""
    if m := re.match(r"lora_unet_conv_in(.*)", name):
        return f"diffusion_model_input_blocks_0_0{m[1]}"
    if m := re.match(r"lora_unet_conv_out(.*)", name):
        return f"diffusion_model_out_2{m[1]}"
    if m := re.match(r"lora_unet_time_embedding_linear_(\d+)(.*)", name):
        return f"diffusion_model_time_embed_{int(m[1]) * 2 - 2}{m[2]}"
    if m := re.match(r"lora_unet_(down|up)_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", name):
        block, layer = int(m[2]), int(m[4])
        suffix = _RESNET_SUFFIX.get(m[5], m[5]) if m[3] == "resnets" else m[5]
        slot = 1 if m[3] == "attentions" else 0
        if m[1] == "down":
            return f"diffusion_model_input_blocks_{1 + block * 3 + layer}_{slot}_{suffix}"
        return f"diffusion_model_output_blocks_{block * 3 + layer}_{slot}_{suffix}"
    if m := re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", name):
        suffix = _RESNET_SUFFIX.get(m[3], m[3]) if m[1] == "resnets" else m[3]
        return f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else int(m[2]) * 2}_{suffix}"
    if m := re.match(r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", name):
        return f"diffusion_model_input_blocks_{3 + int(m[1]) * 3}_0_op"
    if m := re.match(r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv", name):
        block = int(m[1])
        return f"diffusion_model_output_blocks_{2 + block * 3}_{2 if block > 0 else 1}_conv"
    return None


def compvis_name(name: str, is_sd2: bool) -> str:
    """A1111's convert_diffusers_name_to_compvis step; unchanged when no rule applies."""
    converted = _unet_block_name(name)
    if converted:
        return converted
    if m := re.match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)", name):
        if is_sd2:
            return f"model_transformer_resblocks_{m[1]}_{_openclip_part(m[2])}"
        return f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"
    if m := re.match(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)", name):
        return f"1_model_transformer_resblocks_{m[1]}_{_openclip_part(m[2])}"
    return name


@functools.lru_cache(maxsize=8)
def a1111_layer_names(shape: ModelShape) -> frozenset:
    """The layer names A1111 maps for a model of this shape (its network_layer_mapping keys)."""
    names = set()
    layout = unet_layout(shape)
    openclip = {"text_encoder": shape.family in ("sd2", "sd2-v"), "text_encoder_2": True}
    prefix = {"text_encoder": "0_" if shape.family == "sdxl" else "", "text_encoder_2": "1_"}
    for component, model in meta_components(shape).items():
        for path, _ in model.named_modules():
            if component == "unet":
                ldm = unet_to_ldm(path, *layout)
                name = ldm and "diffusion_model." + ldm
            elif openclip[component]:
                name = clip_to_openclip(path)
                name = name and prefix[component] + name
            else:
                name = prefix[component] + clip_to_openai(path)
            if name:
                names.add(name.replace(".", "_"))
    return frozenset(names)


def a1111_lookup(name: str, layers: frozenset, is_sd2: bool) -> str | None:
    """The layer A1111 applies kohya layer `name` to, or None (A1111 drops it silently)."""
    key = compvis_name(name, is_sd2)
    if key in layers:
        return key
    m = _X_PROJ.match(key)
    if m and m[1] in layers:
        return m[1]
    if "lora_unet" in name:
        key = name.replace("lora_unet", "diffusion_model")
        return key if key in layers else None
    if "lora_te1_text_model" in name:
        for replacement in ("0_transformer_text_model", "transformer_text_model"):
            key = name.replace("lora_te1_text_model", replacement)
            if key in layers:
                return key
    return None


def incomplete_fused_attention(matched: dict) -> list:
    """OpenCLIP attention layers that got some but not all of q, k, v, out (A1111 skips q/k/v then)."""
    parts: dict = {}
    for name, target in matched.items():
        if target and (m := _X_PROJ.match(name)) and target.endswith("_attn"):
            parts.setdefault(target, set()).add(m[2][0])
        elif target and target.endswith("_attn_out_proj") and "resblocks" in target:
            parts.setdefault(target.removesuffix("_out_proj"), set()).add("out")
    return sorted(f"{layer} has only {'/'.join(sorted(p))}" for layer, p in parts.items() if p != {"q", "k", "v", "out"})
