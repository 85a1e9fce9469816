"""Component configs for a single-file checkpoint: written by sdlora, shipped, or inferred.

Order of trust: the configs sdlora writes into the file's `__metadata__` (exact, also for tiny
and non-standard models); else the shipped standard config of the family (sdlora/models/configs,
what real community files need) when it matches the tensors' shapes; else configs inferred from
shapes and key counts. Shapes cannot tell attention head counts or GroupNorm group counts, so
inference uses each family's convention there (SD1: 8 heads; SD2/SDXL and CLIP: 64-wide heads;
32 groups).
"""
from __future__ import annotations

import functools
import json
import re
from pathlib import Path

from ...errors import ModelError
from .keys import UNET_PREFIX, VAE_PREFIX, base_family

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "configs"
TEXT_TOKENS = {"vocab_size": 49408, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407}


@functools.lru_cache(maxsize=4)
def _shipped(family: str) -> str:
    return (SHIPPED_DIR / f"{base_family(family)}.json").read_text(encoding="utf-8")


def shipped_configs(family: str) -> dict:
    """The standard configs of a family: {unet, vae, text_encoder[, text_encoder_2], scheduler}."""
    configs = json.loads(_shipped(family))
    configs.pop("_about", None)
    for name in ("text_encoder", "text_encoder_2"):
        if name in configs:
            configs[name] = {**TEXT_TOKENS, **configs[name]}
    if family == "sd2":  # the 512-base model: epsilon at 512 px
        configs["scheduler"]["prediction_type"] = "epsilon"
        configs["unet"]["sample_size"], configs["vae"]["sample_size"] = 64, 512
    return configs


def _sub(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m[1]) for k in keys if (m := rx.match(k))})


def _norm_groups(channels: list[int]) -> int:
    """32 GroupNorm groups as in every real SD model, fewer only where the channels forbid 32."""
    import math

    common = math.gcd(*channels)
    return max(g for g in range(1, 33) if common % g == 0)


def infer_unet_config(state: dict, family: str, pooled_dim: int | None = None) -> dict:
    s = _sub(state, UNET_PREFIX)
    inputs = _indices(s, r"^input_blocks\.(\d+)\.")
    downsamplers = [i for i in inputs if f"input_blocks.{i}.0.op.weight" in s]
    levels = len(downsamplers) + 1
    layers, extra = divmod(len(inputs) - 1 - len(downsamplers), levels)
    if not s or extra or layers < 1:
        raise ModelError("The checkpoint's UNet blocks do not form a Stable Diffusion UNet (input_blocks count).")
    per = layers + 1
    channels, attention, depth = [], [], []
    for level in range(levels):
        first = 1 + level * per
        channels.append(int(s[f"input_blocks.{first}.0.out_layers.3.weight"].shape[0]))
        attention.append(f"input_blocks.{first}.1.proj_in.weight" in s)
        depth.append(len(_indices(s, rf"^input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.")) or 1)
    attn_key = next((k for k in s if k.endswith("attn2.to_k.weight")), None)
    proj_in = next((v for k, v in s.items() if k.endswith("proj_in.weight")), None)
    sd1 = base_family(family) == "sd15"
    config = {
        "in_channels": int(s["input_blocks.0.0.weight"].shape[1]),
        "out_channels": int(s["out.2.weight"].shape[0]),
        "block_out_channels": channels,
        "layers_per_block": layers,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
        "cross_attention_dim": int(s[attn_key].shape[1]) if attn_key else 768,
        "attention_head_dim": 8 if sd1 else [max(c // 64, 1) for c in channels],
        "use_linear_projection": proj_in is not None and proj_in.ndim == 2,
        "transformer_layers_per_block": depth if len(set(depth)) > 1 else depth[0],
        "norm_num_groups": _norm_groups(channels),
        "sample_size": shipped_configs(family)["unet"]["sample_size"],
    }
    if "label_emb.0.0.weight" in s:
        in_dim = int(s["label_emb.0.0.weight"].shape[1])
        time_dim = (in_dim - pooled_dim) // 6 if pooled_dim else 256
        config.update(addition_embed_type="text_time", addition_time_embed_dim=time_dim,
                      projection_class_embeddings_input_dim=in_dim)
    return config


def infer_vae_config(state: dict, family: str) -> dict:
    s = _sub(state, VAE_PREFIX)
    if "encoder.conv_in.weight" not in s:
        raise ModelError(f"The checkpoint has no VAE ({VAE_PREFIX}encoder.conv_in.weight is missing).")
    levels = _indices(s, r"^encoder\.down\.(\d+)\.")
    shipped = shipped_configs(family)["vae"]
    channels = [int(s[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) for i in levels]
    return {
        "in_channels": int(s["encoder.conv_in.weight"].shape[1]),
        "out_channels": int(s["decoder.conv_out.weight"].shape[0]),
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "block_out_channels": channels,
        "norm_num_groups": _norm_groups(channels),
        "layers_per_block": len(_indices(s, r"^encoder\.down\.0\.block\.(\d+)\.")),
        "latent_channels": int(s["decoder.conv_in.weight"].shape[1]),
        "sample_size": shipped["sample_size"],
        "scaling_factor": shipped["scaling_factor"],
    }


def infer_clip_config(state: dict, prefix: str) -> dict:
    """OpenAI CLIP under prefix (e.g. 'cond_stage_model.transformer.')."""
    s = _sub(state, prefix + "text_model.")
    hidden = int(s["embeddings.token_embedding.weight"].shape[1])
    return {
        **TEXT_TOKENS,
        "vocab_size": int(s["embeddings.token_embedding.weight"].shape[0]),
        "hidden_size": hidden,
        "intermediate_size": int(s["encoder.layers.0.mlp.fc1.weight"].shape[0]),
        "num_hidden_layers": len(_indices(s, r"^encoder\.layers\.(\d+)\.")),
        "num_attention_heads": max(hidden // 64, 1),
        "max_position_embeddings": int(s["embeddings.position_embedding.weight"].shape[0]),
        "hidden_act": "quick_gelu",
        "projection_dim": hidden,
    }


def infer_openclip_config(state: dict, prefix: str, drop_last_layer: bool) -> dict:
    """OpenCLIP under prefix (e.g. 'cond_stage_model.model.'); SD2 drops its unused last layer."""
    s = _sub(state, prefix)
    hidden = int(s["token_embedding.weight"].shape[1])
    projection = s.get("text_projection")
    return {
        **TEXT_TOKENS,
        "vocab_size": int(s["token_embedding.weight"].shape[0]),
        "hidden_size": hidden,
        "intermediate_size": int(s["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        "num_hidden_layers": len(_indices(s, r"^transformer\.resblocks\.(\d+)\.")) - int(drop_last_layer),
        "num_attention_heads": max(hidden // 64, 1),
        "max_position_embeddings": int(s["positional_embedding"].shape[0]),
        "hidden_act": "gelu",
        "projection_dim": int(projection.shape[1]) if projection is not None and not drop_last_layer else 512,
    }


def infer_configs(state: dict, family: str) -> dict:
    """Every component's config from the tensors alone (family conventions where shapes are silent)."""
    from .keys import TEXT_ENCODER_PREFIXES

    configs = {}
    for name, (prefix, kind) in TEXT_ENCODER_PREFIXES[base_family(family)].items():
        if kind == "clip":
            configs[name] = infer_clip_config(state, prefix)
        else:
            configs[name] = infer_openclip_config(state, prefix + "model.", drop_last_layer=base_family(family) == "sd2")
    pooled = configs.get("text_encoder_2", {}).get("projection_dim")
    configs["unet"] = infer_unet_config(state, family, pooled)
    configs["vae"] = infer_vae_config(state, family)
    configs["scheduler"] = shipped_configs(family)["scheduler"]
    return configs


def _matches(inferred: dict, standard: dict) -> bool:
    """The standard config fits when every value that shapes can tell agrees."""
    skip = {"attention_head_dim", "num_attention_heads", "sample_size", "scaling_factor", "projection_dim", "_class_name"}
    for key, value in inferred.items():
        if key in skip or key not in standard:
            continue
        if json.dumps(value) != json.dumps(standard[key]) and not (
            isinstance(value, int) and isinstance(standard[key], list) and set(standard[key]) == {value}
        ):
            return False
    return True


def resolve_configs(state: dict, family: str, metadata_configs: dict) -> tuple[dict, dict]:
    """(configs, source per component): metadata > shipped standard (if it fits) > inferred."""
    inferred = infer_configs(state, family)
    standard = shipped_configs(family)
    configs, sources = {}, {}
    for name, guess in inferred.items():
        if name in metadata_configs:
            configs[name], sources[name] = metadata_configs[name], "metadata"
        elif name in standard and _matches(guess, standard[name]):
            configs[name], sources[name] = {**guess, **standard[name]}, "shipped"
        else:
            configs[name], sources[name] = guess, "inferred"
    return configs, sources
