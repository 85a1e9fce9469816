"""Diffusers module paths -> original LDM/SGM ("compvis") paths, as A1111 and kohya SDXL files name
them. UNet numbering: input_blocks.0 is conv_in, then (layers_per_block + 1) entries per down
block (the last one its downsampler); output_blocks have (layers_per_block + 1) per up block;
middle_block is resnet, attention, resnet. Text encoders: OpenAI CLIP keeps transformers'
names under `transformer.text_model.`; OpenCLIP (SD2, SDXL's second) names differ.
"""
from __future__ import annotations

import re

_RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_FIXED = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_BLOCK = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions)\.(\d+)(\..+)?$")
_MID = re.compile(r"^mid_block\.(resnets|attentions)\.(\d+)(\..+)?$")
_SAMPLER = re.compile(r"^(down_blocks|up_blocks)\.(\d+)\.(downsamplers|upsamplers)\.0\.conv$")


def _inner(kind: str, rest: str | None) -> str | None:
    """The part after the block: resnet parts are renamed, attention parts keep their names."""
    if not rest:
        return ""
    rest = rest[1:]
    if kind == "attentions":
        return "." + rest
    return "." + _RESNET_PARTS[rest] if rest in _RESNET_PARTS else None


def unet_to_ldm(path: str, layers_per_block: int, up_has_attention: tuple) -> str | None:
    """LDM path of a diffusers UNet module path; None where LDM has no such module."""
    per_block = layers_per_block + 1
    if path in _FIXED:
        return _FIXED[path]
    if m := _BLOCK.match(path):
        side, block, kind, layer, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        inner = _inner(kind, rest)
        if inner is None:
            return None
        slot = 1 if kind == "attentions" else 0
        if side == "down_blocks":
            return f"input_blocks.{1 + block * per_block + layer}.{slot}{inner}"
        return f"output_blocks.{block * per_block + layer}.{slot}{inner}"
    if m := _MID.match(path):
        kind, layer, rest = m[1], int(m[2]), m[3]
        inner = _inner(kind, rest)
        if inner is None:
            return None
        return f"middle_block.{1 if kind == 'attentions' else 2 * layer}{inner}"
    if m := _SAMPLER.match(path):
        block = int(m[2])
        if m[1] == "down_blocks":
            return f"input_blocks.{(block + 1) * per_block}.0.op"
        slot = 2 if up_has_attention[block] else 1
        return f"output_blocks.{block * per_block + layers_per_block}.{slot}.conv"
    return None


_OPENCLIP_PARTS = {
    "self_attn": "attn",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
}
_CLIP_LAYER = re.compile(r"^(?:text_model\.)?encoder\.layers\.(\d+)\.(.+)$")


def clip_to_openclip(path: str) -> str | None:
    """OpenCLIP path (as A1111 holds SD2's and SDXL's second text encoder) of a CLIP module path.
    q/k/v projections have no module of their own there: they live in the fused attention."""
    m = _CLIP_LAYER.match(path)
    if not m or m[2] not in _OPENCLIP_PARTS:
        return None
    return f"model.transformer.resblocks.{m[1]}.{_OPENCLIP_PARTS[m[2]]}"


def clip_to_openai(path: str) -> str:
    """OpenAI CLIP path as A1111 holds it (transformers 4 names, with `text_model.`)."""
    return "transformer." + with_text_model(path)


def with_text_model(path: str) -> str:
    return path if path.startswith("text_model.") else "text_model." + path
