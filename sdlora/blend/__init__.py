"""Weighted blending of several LoRAs: exact concatenation or SVD re-rank (merge), A1111-style
per-block weights (blocks), baking into a base model (bake) and a live preview grid (preview).
The math is in docs FORMATS.md, "Blending several LoRAs"."""
from ..errors import SdloraError


class BlendError(SdloraError):
    """The blend inputs or options cannot be combined (bad weight, mixed families, bad rank)."""
