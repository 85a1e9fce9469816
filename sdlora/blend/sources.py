"""Blend inputs: `PATH:WEIGHT[:BLOCKS]` specs, the files read into Adapters, one family for all."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..export.adapter import Adapter
from ..export.io import read_lora_file
from ..export.metadata import HASH_KEY
from ..export.shapes import ModelShape
from . import BlendError
from .blocks import parse_block_weights

# Families whose LoRAs fit the same networks (SD2 512 and 768-v share the architecture).
_ARCHITECTURE = {"sd15": "sd1", "sd2": "sd2", "sd2-v": "sd2", "sdxl": "sdxl"}


@dataclass
class BlendInput:
    label: str  # file name (or any name) shown in reports and metadata
    adapter: Adapter
    weight: float
    blocks: tuple | None = None  # per-block multipliers (see blocks.py), None = all 1


@dataclass(frozen=True)
class SourceSpec:
    path: Path
    weight: float
    blocks_text: str | None = None


def parse_source_spec(text: str) -> SourceSpec:
    """'A.safetensors:0.7' or 'A.safetensors:0.7:1,0,0,...'; split from the right, so paths may hold ':'."""
    head, sep, last = text.rpartition(":")
    blocks = None
    if sep and "," in last:
        blocks, (head, sep, last) = last, head.rpartition(":")
    if not sep or not head:
        raise BlendError(f"{text!r}: write each input as PATH:WEIGHT (e.g. style.safetensors:0.7), "
                         "optionally PATH:WEIGHT:BLOCK,WEIGHTS.")
    try:
        weight = float(last)
    except ValueError:
        raise BlendError(f"{text!r}: the weight {last!r} is not a number.") from None
    if not math.isfinite(weight):
        raise BlendError(f"{text!r}: the weight must be a finite number.")
    return SourceSpec(Path(head), weight, blocks)


def check_same_family(adapters: list, labels: list) -> str:
    """The common family, or a BlendError naming the files of each family."""
    groups: dict = {}
    for adapter, label in zip(adapters, labels):
        groups.setdefault(_ARCHITECTURE.get(adapter.family, adapter.family), []).append(f"{label} ({adapter.family})")
    if len(groups) > 1:
        listing = "; ".join(", ".join(files) for files in groups.values())
        raise BlendError(f"cannot blend LoRAs of different model families: {listing}. "
                         "Every input must be for the same base model family (e.g. all SD1.5 or all SDXL).")
    return adapters[0].family


def read_blend_inputs(specs: list, shape: ModelShape | None = None, family: str | None = None) -> list:
    """Read every spec's file (kohya / diffusers / PEFT) into BlendInputs of one family."""
    if not specs:
        raise BlendError("give at least one input LoRA (PATH:WEIGHT).")
    specs = [parse_source_spec(s) if isinstance(s, str) else s for s in specs]
    adapters = [read_lora_file(s.path, family, shape) for s in specs]
    family = check_same_family(adapters, [s.path.name for s in specs])
    return [BlendInput(s.path.name, a, s.weight, parse_block_weights(s.blocks_text, family) if s.blocks_text else None)
            for s, a in zip(specs, adapters)]


def source_record(item: BlendInput) -> dict:
    """What the output's metadata says about one input."""
    meta = item.adapter.metadata
    record = {"file": item.label, "weight": item.weight}
    if item.blocks is not None:
        record["blocks"] = list(item.blocks)
    for key, name in ((HASH_KEY, "sshs_model_hash"), ("ss_output_name", "output_name")):
        if meta.get(key):
            record[name] = meta[key]
    return record
