"""The Blend tab: pick saved adapters of the project with weights, preview a grid (base, each
alone, the blend) on the project's base model, save the blend into <project>/blends/.
No torch at module scope: sdlora.blend is imported inside the handlers."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from ui.app import _project, _unused, _user_errors, saved_adapters

METHODS = ["concat", "svd"]


def blend_sources(root: str) -> list[str]:
    """Adapters of the project's runs and its earlier blends, newest first."""
    blends = sorted((_project(root).root / "blends").glob("*.safetensors"), key=lambda p: p.stat().st_mtime,
                    reverse=True)
    return saved_adapters(root) + [str(p) for p in blends]


def refresh_blend_sources(root: str):
    return gr.Dropdown(choices=blend_sources(root), value=[])


def _specs(root: str, adapters: list | None, weights: str) -> list:
    from sdlora.blend.sources import SourceSpec

    project = _project(root).root.resolve()
    paths = [Path(a).resolve() for a in adapters or []]
    if len(paths) < 1:
        raise gr.Error("Pick at least one adapter to blend.")
    if any(project not in p.parents or not p.is_file() for p in paths):
        raise gr.Error("Pick adapters of this project (its runs/ or blends/ folder).")
    try:
        values = [float(w) for w in weights.replace(";", ",").split(",") if w.strip()]
    except ValueError:
        raise gr.Error(f"Weights must be numbers separated by commas, e.g. 0.7, 0.3 (got {weights!r}).") from None
    if len(values) != len(paths):
        raise gr.Error(f"Give one weight per adapter: {len(paths)} adapter(s), {len(values)} weight(s).")
    return [SourceSpec(p, w) for p, w in zip(paths, values)]


def _blend_in_memory(root: str, specs: list, method: str, rank: float, conv_rank: float):
    """(result, inputs, shape, rank, conv rank) of the blend the Save button would write."""
    from sdlora.blend.merge import blend
    from sdlora.blend.sources import read_blend_inputs
    from sdlora.export.convert import shape_for_base

    shape = shape_for_base(_project(root).load_config().model.path)
    inputs = read_blend_inputs(specs, shape)
    rank_value = int(rank) if method == "svd" else None
    conv_value = int(conv_rank) if method == "svd" and conv_rank else None
    return blend(inputs, method, rank_value, conv_value, shape), inputs, shape, rank_value, conv_value


@_user_errors
def preview_blend(root: str, adapters: list, weights: str, prompts: str, seeds: str, steps: float = 20,
                  method: str = "concat", rank: float = 32, conv_rank: float = 0):
    """The grid; with svd, a last column shows the re-ranked blend as it would be saved."""
    from sdlora.blend.preview import render_blend_preview

    specs = _specs(root, adapters, weights)
    saved = None
    if method == "svd":
        result = _blend_in_memory(root, specs, method, rank, conv_rank)[0]
        saved = (f"as saved: svd rank {int(rank)} (error {result.relative_error:.3f})", result.adapter)
    prompt_list = [p.strip() for p in prompts.splitlines() if p.strip()] or ["a photo"]
    try:
        seed_list = [int(s) for s in seeds.replace(",", " ").split()] or [0]
    except ValueError:
        raise gr.Error(f"Seeds must be whole numbers (got {seeds!r}).") from None
    base = _project(root).load_config().model.path
    grid = render_blend_preview(base, [(s.path, s.weight) for s in specs], prompt_list, seed_list, int(steps),
                                saved=saved)
    return grid.image, "Columns: " + " | ".join(grid.titles) + f". Rows: {len(prompt_list)} prompt(s) x seeds {seed_list}."


@_user_errors
def save_blend(root: str, adapters: list, weights: str, method: str = "concat", rank: float = 32,
               conv_rank: float = 0, name: str = "blend"):
    from sdlora.blend.files import write_blend_file
    from ui.project import safe_file_name

    project = _project(root)
    result, inputs, shape, rank_value, conv_value = _blend_in_memory(root, _specs(root, adapters, weights), method,
                                                                     rank, conv_rank)
    stem = Path(safe_file_name(name or "blend")).stem or "blend"
    target = _unused(project.root / "blends" / f"{stem}.safetensors")
    report = write_blend_file(result, inputs, target, shape, "kohya", "fp16", rank_value, conv_value)
    return str(target), "```\n" + result.text() + "\n" + report.text() + "\n```"


def blend_tab(root_state) -> None:
    with gr.Row():
        adapters = gr.Dropdown(label="Adapters to blend", choices=[], multiselect=True, scale=4)
        refresh = gr.Button("Refresh", scale=1)
    with gr.Row():
        weights = gr.Textbox(label="Weights (one per adapter, in order)", value="0.7, 0.3",
                             info="Negative weights subtract a LoRA.")
        method = gr.Radio(METHODS, value="concat", label="Method",
                          info="concat is exact (rank = sum of ranks); svd is smaller, its error is reported.")
        rank = gr.Number(value=32, precision=0, minimum=1, label="SVD rank")
        conv_rank = gr.Number(value=0, precision=0, minimum=0, label="SVD conv rank (0 = same)")
    with gr.Accordion("Preview", open=True):
        with gr.Row():
            prompts = gr.Textbox(label="Prompts (one per line)", value="a photo", lines=2)
            seeds = gr.Textbox(label="Seeds", value="0")
            steps = gr.Number(value=20, precision=0, minimum=1, maximum=100, label="Steps")
        preview = gr.Button("Preview")
        grid = gr.Image(label="Grid", type="pil", elem_id="blend-grid")
        titles = gr.Markdown()
    with gr.Row():
        name = gr.Textbox(label="Blend name", value="blend")
        save = gr.Button("Save blend", variant="primary")
    download = gr.File(label="Blend file")
    report = gr.Markdown(elem_id="blend-report")
    refresh.click(refresh_blend_sources, [root_state], [adapters], api_name="list_blend_sources")
    preview.click(preview_blend, [root_state, adapters, weights, prompts, seeds, steps, method, rank, conv_rank],
                  [grid, titles],
                  api_name="blend_preview")
    save.click(save_blend, [root_state, adapters, weights, method, rank, conv_rank, name], [download, report],
               api_name="blend_save")
