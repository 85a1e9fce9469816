"""Bake a blend into a base model: W <- W + sum_i c_i dW_i on every adapted layer, saved as a
diffusers folder. The deltas are added directly (float64 sum, cast to the weight's dtype) rather
than through fuse_lora, so per-block weights and layers of any input set bake exactly the same way.
Single-file (LDM layout) output comes with single-file checkpoint support."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..export.shapes import shape_of_folder
from ..fsutil import atomic_dir
from . import BlendError
from .merge import layer_terms, weighted_delta


@dataclass
class BakeReport:
    folder: Path
    layers: int
    largest_change: float  # max |dW| over all layers

    def text(self) -> str:
        kind = "single-file checkpoint" if self.folder.suffix == ".safetensors" else "diffusers folder"
        return (f"baked {self.layers} layers into {self.folder} ({kind}); "
                f"largest weight change {self.largest_change:.4g}")


def load_pipeline(base: str):
    """The base model's diffusers pipeline (SD1/SD2/SDXL) from a folder, builtin:NAME or cached hub id."""
    from diffusers import DiffusionPipeline

    from ..models.loading import resolve_model_path

    folder = resolve_model_path(base)
    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return folder, pipe


def _layer(pipe, module_name: str):
    component, path = module_name.split(".", 1)
    model = getattr(pipe, component, None)
    if model is None:
        raise BlendError(f"the blend changes {component} but the base model has no {component}.")
    for candidate in (path, "text_model." + path):  # transformers 4 keeps text_model.
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    raise BlendError(f"{module_name}: no such layer in the base model (LoRA for another architecture?).")


def add_blend_to_models(pipe, inputs: list, shape) -> tuple[int, float]:
    """Add every layer's weighted delta to the live pipeline; returns (layers, largest |dW|)."""
    import torch

    largest = 0.0
    terms_by_layer = layer_terms(inputs, shape)
    with torch.no_grad():
        for name, terms in terms_by_layer.items():
            layer = _layer(pipe, name)
            delta = weighted_delta(terms).reshape(layer.weight.shape)
            layer.weight.copy_((layer.weight.double() + delta).to(layer.weight.dtype))
            largest = max(largest, float(delta.abs().max()))
    return len(terms_by_layer), largest


def bake(base: str, inputs: list, output: Path) -> BakeReport:
    """Write the base model with the blend merged in: a new diffusers folder at `output`, or, when
    `output` ends in .safetensors, one checkpoint in the original (LDM) layout A1111 / ComfyUI load."""
    output = Path(output)
    if output.exists():
        raise BlendError(f"{output} already exists; choose a new folder (sdlora never overwrites).")
    folder, pipe = load_pipeline(base)
    shape = shape_of_folder(folder)
    families = {item.adapter.family for item in inputs}
    if shape.family not in families and not {shape.family, *families} <= {"sd2", "sd2-v"}:
        raise BlendError(f"the LoRAs are for {', '.join(sorted(families))} but {base} is {shape.family}.")
    layers, largest = add_blend_to_models(pipe, inputs, shape)
    if output.suffix.lower() == ".safetensors":
        from ..models.single_file import write_single_file

        write_single_file(pipe, output, family=shape.family, title=output.stem)
    else:
        with atomic_dir(output) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
    return BakeReport(output, layers, largest)
