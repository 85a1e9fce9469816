"""LoRA files on the tiny models for the blend tests: different ranks, alphas and target sets."""
from __future__ import annotations

import torch

from sdlora.export.adapter import adapter_from_models
from sdlora.export.io import write_lora_file
from sdlora.export.metadata import TrainingInfo, build_metadata
from sdlora.export.shapes import shape_of_models
from tests.export_fixtures import pipeline_with_lora, text_encoders

# name -> (targets, rank, alpha, seed): A attention only, B attention + ff + proj + 3x3 convs, C attention.
LORAS = {"a": ("attn", 4, 2.0, 1), "b": ("ff-conv", 8, 4.0, 2), "c": ("attn", 2, 2.0, 3)}


def write_loras(folder, family: str, names=("a", "b", "c"), layout: str = "kohya") -> tuple[dict, object]:
    """({name: path}, model shape) of fp32 LoRA files on build_tiny_pipeline(family, seed=0)."""
    paths, shape = {}, None
    for name in names:
        targets, rank, alpha, seed = LORAS[name]
        pipe = pipeline_with_lora(family, targets, rank, alpha, seed)
        tes = text_encoders(pipe, family)
        adapter = adapter_from_models(family, unet=pipe.unet, **tes)
        adapter.metadata = build_metadata(adapter, TrainingInfo(output_name=f"{family}-{name}",
                                                                trigger_words=[f"trig{name}"]))
        shape = shape_of_models(family, unet=pipe.unet, **tes)
        paths[name] = write_lora_file(adapter, folder / f"{family}-{name}.safetensors", layout, "fp32", shape)
    return paths, shape


def delta(module) -> torch.Tensor:
    """The module's effect (alpha / r) up @ down in float64, convs flattened to [out, in*kh*kw]."""
    up = module.up.double().reshape(module.up.shape[0], -1)
    down = module.down.double().reshape(module.rank, -1)
    return module.alpha / module.rank * up @ down


def expected_deltas(adapters_and_weights) -> dict:
    """{layer: sum_i w_i dW_i} computed straight from the inputs (layers missing in an input add 0)."""
    total: dict = {}
    for adapter, weight in adapters_and_weights:
        for name, module in adapter.modules.items():
            total[name] = total.get(name, 0) + weight * delta(module)
    return total
