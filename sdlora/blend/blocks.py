"""Per-block weights in the A1111 "LoRA Block Weight" convention.

A vector of multipliers, one per block: BASE (all text encoders), then the UNet's LDM blocks
`input_blocks.N` -> IN<N>, `middle_block` -> MID, `output_blocks.N` -> OUT<N>. Accepted lengths:
SD1/SD2 17 (the blocks that hold attention) or 26 (every block), SDXL 12 or 20. Layers in a block
the vector does not name, and layers outside the blocks (time embedding, conv_out), keep
multiplier 1.
"""
from __future__ import annotations

import functools
import re

from ..export.ldm_names import unet_to_ldm
from ..export.shapes import ModelShape, unet_layout
from . import BlendError


def _names(ins, outs) -> tuple:
    return ("BASE", *(f"IN{i:02d}" for i in ins), "MID", *(f"OUT{i:02d}" for i in outs))


SD_BLOCKS = {
    17: _names((1, 2, 4, 5, 7, 8), range(3, 12)),
    26: _names(range(12), range(12)),
}
SDXL_BLOCKS = {
    12: _names((4, 5, 7, 8), range(6)),
    20: _names(range(9), range(9)),
}
_LDM_BLOCK = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.|^(middle_block)\.")


def block_tables(family: str) -> dict:
    """{vector length: block names} the family accepts."""
    return SDXL_BLOCKS if family == "sdxl" else SD_BLOCKS


def parse_block_weights(text: str, family: str) -> tuple:
    """'1,0,0.5,...' -> (1.0, 0.0, 0.5, ...), checked against the family's accepted lengths."""
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise BlendError(f"block weights {text!r} must be comma-separated numbers.") from None
    tables = block_tables(family)
    if len(values) not in tables:
        lengths = " or ".join(str(n) for n in tables)
        raise BlendError(f"{family} block weights need {lengths} numbers ({', '.join(tables[min(tables)])}); "
                         f"got {len(values)}.")
    return values


def block_of(module_name: str, shape: ModelShape) -> str | None:
    """A1111 block name (BASE, IN04, MID, OUT03, ...) of 'component.path'; None outside the blocks."""
    component, path = module_name.split(".", 1)
    if component != "unet":
        return "BASE"
    ldm = unet_to_ldm(path, *unet_layout(shape))
    m = _LDM_BLOCK.match(ldm or "")
    if not m:
        return None
    if m[3]:
        return "MID"
    return f"{'IN' if m[1] == 'input_blocks' else 'OUT'}{int(m[2]):02d}"


@functools.lru_cache(maxsize=64)
def _multipliers(values: tuple, family: str) -> dict:
    return dict(zip(block_tables(family)[len(values)], values))


def block_multiplier(module_name: str, values: tuple | None, shape: ModelShape) -> float:
    """The multiplier a block-weight vector gives one module (1 without a vector)."""
    if values is None:
        return 1.0
    return _multipliers(values, shape.family).get(block_of(module_name, shape), 1.0)
