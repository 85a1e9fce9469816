"""Re-export a LoRA file in another layout / dtype and check the result (CLI `export`, UI Export tab)."""
from __future__ import annotations

from pathlib import Path

from ..errors import SdloraError
from .check import CheckReport, check_lora_file
from .io import read_lora_file, write_lora_file


def shape_for_base(base: str | None, family: str | None = None):
    """The model shape to check against: the given base model's configs (diffusers folder or
    single-file checkpoint), or None (the family's real one)."""
    from ..models.loading import resolve_model_path
    from .shapes import shape_of_folder, shape_of_single_file

    if not base:
        return None
    path = resolve_model_path(base)
    return shape_of_single_file(path, family) if path.is_file() else shape_of_folder(path, family)


def export_lora_file(source: Path, target: Path, layout: str = "kohya", dtype: str = "fp16",
                     base: str | None = None, family: str | None = None) -> CheckReport:
    """Read `source` (any supported layout), write `target`, and return the compatibility report."""
    source, target = Path(source), Path(target)
    if target.resolve() == source.resolve():
        raise SdloraError("The output must be a new file, not the input file.")
    if target.exists():
        raise SdloraError(f"{target} already exists; choose another output name (sdlora never overwrites).")
    shape = shape_for_base(base, family)
    adapter = read_lora_file(source, family, shape)
    write_lora_file(adapter, target, layout, dtype, shape)
    return check_lora_file(target, shape, family)
