"""Live blend preview: one grid of images — base, each LoRA alone (at its blend weight), the blend —
per prompt and seed, through diffusers' load_lora_weights + set_adapters. Nothing is written.
Optionally a last column shows a blend as it would be saved (an SVD re-rank, block weights),
loaded from memory as one more adapter."""
from __future__ import annotations

from dataclasses import dataclass

from . import BlendError


@dataclass
class PreviewGrid:
    image: object  # PIL image: one row per (prompt, seed), one column per title
    titles: list


def _adapter_names(count: int) -> list:
    return [f"blend_input_{i}" for i in range(count)]


SAVED_ADAPTER = "blend_as_saved"


def load_preview_pipeline(base: str, sources: list, saved=None):
    """The base pipeline with every (path, weight) source loaded as its own adapter (and the
    in-memory `saved` Adapter, if given, as SAVED_ADAPTER)."""
    from .bake import load_pipeline

    folder, pipe = load_pipeline(base)
    if saved is not None:
        _load_adapter_from_memory(pipe, saved, folder)
    for name, (path, _) in zip(_adapter_names(len(sources)), sources):
        try:
            pipe.load_lora_weights(str(path), adapter_name=name)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise BlendError(f"{path} does not load into {base}: {exc}") from None
    return pipe


def _load_adapter_from_memory(pipe, adapter, folder) -> None:
    import torch

    from ..export.keys import to_kohya_state_dict
    from ..export.shapes import shape_of_folder

    state = to_kohya_state_dict(adapter.modules, shape_of_folder(folder), torch.float32)
    pipe.load_lora_weights(state, adapter_name=SAVED_ADAPTER)


def preview_columns(sources: list) -> list:
    """[(title, adapter weights)]: base (all 0), each alone, the blend."""
    from pathlib import Path

    weights = [w for _, w in sources]
    columns = [("base", [0.0] * len(sources))]
    for i, (path, weight) in enumerate(sources):
        alone = [0.0] * len(sources)
        alone[i] = weight
        columns.append((f"{Path(path).stem} x{weight:g}", alone))
    columns.append(("blend " + " + ".join(f"{w:g}" for w in weights), weights))
    return columns


def render_blend_preview(base: str, sources: list, prompts: list, seeds: list, steps: int = 20,
                         size: int | None = None, guidance_scale: float = 7.0, saved: tuple | None = None) -> PreviewGrid:
    """sources: [(lora path, weight)]; saved: optional (title, Adapter) shown as a last column.
    Rows: every prompt x seed; columns: see preview_columns."""
    import torch

    from ..sample import image_grid

    if not sources or not prompts or not seeds:
        raise BlendError("the preview needs at least one LoRA, one prompt and one seed.")
    pipe = load_preview_pipeline(base, sources, saved[1] if saved else None)
    names = _adapter_names(len(sources))
    columns = preview_columns(sources)
    if saved:
        names.append(SAVED_ADAPTER)
        columns = [(title, [*weights, 0.0]) for title, weights in columns] + [(saved[0], [0.0] * len(sources) + [1.0])]
    size = size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    images = []
    for prompt in prompts:
        for seed in seeds:
            for _, weights in columns:
                pipe.set_adapters(names, adapter_weights=weights)
                with torch.no_grad():
                    images.append(pipe(prompt, num_inference_steps=steps, guidance_scale=guidance_scale,
                                       height=size, width=size,
                                       generator=torch.Generator().manual_seed(int(seed))).images[0])
    return PreviewGrid(image_grid(images, columns=len(columns)), [title for title, _ in columns])
