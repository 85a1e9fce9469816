"""`sdlora convert`: diffusers folder <-> single-file checkpoint (and .ckpt -> .safetensors)."""
from __future__ import annotations

from pathlib import Path

from ...errors import ModelError


def load_diffusers_pipeline(folder: Path):
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging

    logging.disable_progress_bar()
    try:
        return DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelError(f"Could not load the diffusers model in {folder}: {exc}") from None


def convert_model(model: str, output: Path, dtype: str | None = None, family: str | None = None,
                  prediction_type: str | None = None, allow_pickle: bool = False) -> str:
    """Write `model` (diffusers folder, builtin:NAME or single file) to `output`; returns a summary line.
    output ending in .safetensors: a single file in the original layout; otherwise a diffusers folder."""
    from ...fsutil import atomic_dir
    from ..loading import resolve_model_path
    from .read import load_single_file
    from .write import write_single_file

    source = resolve_model_path(model, allow_pickle)
    output = Path(output)
    to_single = output.suffix.lower() == ".safetensors"
    if not to_single and output.suffix:
        raise ModelError(f"{output}: write a single file as .safetensors, or give a folder name for diffusers format.")
    if output.exists() and (not to_single) and any(output.iterdir()):
        raise ModelError(f"{output} exists and is not empty; choose a new folder.")
    if source.is_file():
        loaded = load_single_file(source, family, prediction_type, allow_pickle=allow_pickle)
        pipeline, family = loaded.pipeline(), loaded.family
    else:
        if not to_single:
            raise ModelError(f"{source} is already a diffusers folder; to write a single file give -o NAME.safetensors.")
        pipeline = load_diffusers_pipeline(source)
        family = None if family in (None, "auto") else family
    if to_single:
        write_single_file(pipeline, output, family, dtype=dtype)
        return f"single-file checkpoint written to {output}"
    if dtype:
        import torch

        pipeline.to({"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype])
    if output.exists():
        output.rmdir()  # empty: atomic_dir renames onto a missing target
    with atomic_dir(output) as tmp:
        pipeline.save_pretrained(tmp, safe_serialization=True)
    return f"{family} diffusers folder written to {output}"
