"""Live blend preview: one grid of images — base, each LoRA alone (at its blend weight), the blend —
per prompt and seed, through diffusers' load_lora_weights + set_adapters. Nothing is written."""
from __future__ import annotations

from dataclasses import dataclass

from . import BlendError


@dataclass
class PreviewGrid:
    image: object  # PIL image: one row per (prompt, seed), one column per title
    titles: list


def _adapter_names(count: int) -> list:
    return [f"blend_input_{i}" for i in range(count)]


def load_preview_pipeline(base: str, sources: list):
    """The base pipeline with every (path, weight) source loaded as its own adapter."""
    from .bake import load_pipeline

    _, pipe = load_pipeline(base)
    for name, (path, _) in zip(_adapter_names(len(sources)), sources):
        try:
            pipe.load_lora_weights(str(path), adapter_name=name)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise BlendError(f"{path} does not load into {base}: {exc}") from None
    return pipe


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
                         size: int | None = None, guidance_scale: float = 7.0) -> PreviewGrid:
    """sources: [(lora path, weight)]. Rows: every prompt x seed; columns: see preview_columns."""
    import torch

    from ..sample import image_grid

    if not sources or not prompts or not seeds:
        raise BlendError("the preview needs at least one LoRA, one prompt and one seed.")
    pipe = load_preview_pipeline(base, sources)
    names = _adapter_names(len(sources))
    size = size or pipe.unet.config.sample_size * pipe.vae_scale_factor
    columns = preview_columns(sources)
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
