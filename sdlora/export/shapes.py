"""Model shapes (component configs) and weightless "meta" copies of the models built from them.

Key names and the loaders' checks only need module names and weight shapes, so the models are
built on the meta device: no memory, no weights, a fraction of a second even for SDXL.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelError

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")

_CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
               hidden_act="quick_gelu", projection_dim=768)
_OPENCLIP_H = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                   hidden_act="gelu", projection_dim=512)
_OPENCLIP_BIGG = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                      hidden_act="gelu", projection_dim=1280)
_SD15_UNET = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
_SD2_UNET = dict(sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                 use_linear_projection=True)
_SDXL_UNET = dict(
    sample_size=128,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
STANDARD_CONFIGS = {
    "sd15": {"unet": _SD15_UNET, "text_encoder": _CLIP_L},
    "sd2": {"unet": _SD2_UNET, "text_encoder": _OPENCLIP_H},
    "sd2-v": {"unet": _SD2_UNET, "text_encoder": _OPENCLIP_H},
    "sdxl": {"unet": _SDXL_UNET, "text_encoder": _CLIP_L, "text_encoder_2": _OPENCLIP_BIGG},
}


@dataclass(frozen=True)
class ModelShape:
    """The family and the configs (as JSON text, so the shape is hashable) of each component."""

    family: str
    configs: tuple  # ((component, config_json), ...)

    def config(self, component: str) -> dict:
        return json.loads(dict(self.configs)[component])

    @property
    def components(self) -> tuple:
        return tuple(name for name, _ in self.configs)


def _shape(family: str, configs: dict) -> ModelShape:
    return ModelShape(family, tuple((k, json.dumps(dict(v), sort_keys=True, default=str)) for k, v in configs.items()))


def standard_shape(family: str) -> ModelShape:
    """The real architecture of a family (SD1.5, SD2.x, SDXL base)."""
    if family not in STANDARD_CONFIGS:
        raise ModelError(f"Unknown model family {family!r}; expected one of {', '.join(STANDARD_CONFIGS)}.")
    return _shape(family, STANDARD_CONFIGS[family])


def shape_of_models(family: str, **components) -> ModelShape:
    """Shape of live models, e.g. shape_of_models('sdxl', unet=..., text_encoder=..., text_encoder_2=...)."""
    configs = {}
    for name in COMPONENTS:
        module = components.get(name)
        if module is not None:
            config = module.config
            configs[name] = dict(config) if name == "unet" else config.to_diff_dict()
    return _shape(family, configs)


def shape_of_folder(folder: Path, family: str | None = None) -> ModelShape:
    """Shape of a diffusers model folder, read from its config files only."""
    from ..models.family import detect_family

    folder = Path(folder)
    family = family or detect_family(folder)
    configs = {}
    for name in COMPONENTS:
        path = folder / name / "config.json"
        if path.is_file():
            configs[name] = json.loads(path.read_text(encoding="utf-8"))
    if "unet" not in configs:
        raise ModelError(f"{folder} has no unet/config.json: not a diffusers model folder.")
    return _shape(family, configs)


def shape_of_single_file(path: Path, family: str | None = None) -> ModelShape:
    """Shape of a single-file (original layout) .safetensors checkpoint, from its header only."""
    from ..models.single_file.read import single_file_configs

    family, configs = single_file_configs(path, family)
    return _shape(family, {name: configs[name] for name in COMPONENTS if name in configs})


@functools.lru_cache(maxsize=8)
def meta_components(shape: ModelShape) -> dict:
    """{component: weightless module} for a shape; cached, treat as read-only."""
    return {name: _build_meta(name, shape.config(name)) for name in shape.components}


def fresh_meta_components(shape: ModelShape) -> dict:
    """Like meta_components, but new modules a loader may modify."""
    return {name: _build_meta(name, shape.config(name)) for name in shape.components}


def _build_meta(component: str, config: dict):
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device("meta"):
        if component == "unet":
            return UNet2DConditionModel.from_config(config)
        model_class = CLIPTextModelWithProjection if component == "text_encoder_2" else CLIPTextModel
        return model_class(CLIPTextConfig(**config))


def unet_layout(shape: ModelShape) -> tuple[int, tuple]:
    """(layers_per_block, whether each up block has attentions): all the LDM block numbering needs."""
    config = shape.config("unet")
    layers = config.get("layers_per_block", 2)
    if not isinstance(layers, int):
        if len(set(layers)) != 1:
            raise ModelError("UNets with different layers per block have no LDM block names.")
        layers = layers[0]
    up_types = config.get("up_block_types") or ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    return layers, tuple("CrossAttn" in t for t in up_types)
