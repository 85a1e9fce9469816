"""Write a blend as a LoRA file with complete metadata (ss_*, modelspec, the sources, weights and
method) through the export writer, then run the compatibility check on the written file."""
from __future__ import annotations

import json
from pathlib import Path

from ..export.check import CheckReport, check_lora_file
from ..export.io import write_lora_file
from ..export.metadata import TrainingInfo, build_metadata
from ..export.shapes import ModelShape
from . import BlendError
from .merge import BlendResult
from .sources import source_record

BLEND_KEYS = ("sdlora_blend_sources", "sdlora_blend_method")


def _merged_training_info(inputs: list, output_name: str) -> TrainingInfo:
    """Tags and trigger words of all inputs carry over (A1111 shows them for the blend)."""
    tags: dict = {}
    triggers: list = []
    for item in inputs:
        meta = item.adapter.metadata
        try:
            for folder, counts in json.loads(meta.get("ss_tag_frequency") or "{}").items():
                tags[f"{item.label}/{folder}"] = counts
            triggers += [t for t in json.loads(meta.get("ss_trigger_words") or "[]") if t not in triggers]
        except (json.JSONDecodeError, AttributeError):
            pass  # a foreign file with odd metadata still blends; its tags just do not carry over
    resolution = max((_resolution(item.adapter.metadata) for item in inputs), default=512)
    return TrainingInfo(output_name=output_name, resolution=resolution, tag_frequency=tags, trigger_words=triggers)


def _resolution(meta: dict) -> int:
    text = meta.get("modelspec.resolution", "")
    first = text.split("x")[0]
    return int(first) if first.isdigit() else 512


def blend_metadata(result: BlendResult, inputs: list, output_name: str, rank: int | None = None,
                   conv_rank: int | None = None) -> dict:
    meta = build_metadata(result.adapter, _merged_training_info(inputs, output_name))
    method = {"method": result.method}
    if result.method == "svd":
        method.update(rank=rank, conv_rank=conv_rank or rank, relative_error=result.relative_error,
                      retained_energy=result.retained_energy)
    meta["sdlora_blend_sources"] = json.dumps([source_record(item) for item in inputs])
    meta["sdlora_blend_method"] = json.dumps(method)
    meta["ss_sd_model_name"] = " + ".join(f"{item.label}:{item.weight:g}" for item in inputs)[:500]
    return meta


def write_blend_file(result: BlendResult, inputs: list, path: Path, shape: ModelShape | None = None,
                     layout: str = "kohya", dtype: str = "fp16", rank: int | None = None,
                     conv_rank: int | None = None) -> CheckReport:
    """Write atomically (never over an existing file) and return the check of the written file."""
    path = Path(path)
    if path.exists():
        raise BlendError(f"{path} already exists; choose another output name (sdlora never overwrites).")
    if not result.adapter.modules:
        raise BlendError("the blend has no layers (every weight is 0?); nothing to write.")
    result.adapter.metadata = blend_metadata(result, inputs, path.stem, rank, conv_rank)
    write_lora_file(result.adapter, path, layout, dtype, shape)
    return check_lora_file(path, shape)
