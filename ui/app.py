"""The Gradio page: Dataset, Train, Export and Blend (ui/blend_tab.py) tabs over one project folder.

Every handler is a thin call into ui.project / ui.runs / sdlora; training itself runs in a child
process. No torch import here: the first paint must not wait for it.
"""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from sdlora.config import PRESETS_DIR, load_config
from sdlora.errors import SdloraError
from ui import project as projects
from ui import runs
from ui.forms import config_from_form, form_options, widget_for, widget_value
from ui.status import describe_model, plan_markdown, progress_html, run_log

POLL_SECONDS = 1.0


WORKSPACE: Path | None = None  # projects must live under this folder (files are served from it only)
CURRENT_PROJECT: dict = {"root": ""}  # the project last opened in any tab of the page


def _project(root: str) -> projects.Project:
    path = Path(root).expanduser().resolve()
    if WORKSPACE is not None and WORKSPACE != path and WORKSPACE not in path.parents:
        raise SdloraError(f"Projects live under {WORKSPACE}; {path} is outside it. Start `sdlora ui --project` "
                          "with a folder there to use another place.")
    return projects.open_project(path)


def _user_errors(handler):
    """Show an SdloraError as a message in the page instead of a crash."""

    def wrapped(*args):
        try:
            return handler(*args)
        except SdloraError as exc:
            raise gr.Error(str(exc)) from None

    wrapped.__name__ = handler.__name__
    return wrapped


# ---- Dataset tab --------------------------------------------------------------------------------
def dataset_view(root: str):
    project = _project(root)
    gallery = [(str(p), f"{p.name}: {project.read_caption(p.name)}") for p in project.image_files()]
    tags = [[tag, count] for tag, count in project.tag_frequency()[:50]]
    return gallery, tags, plan_markdown(project)


@_user_errors
def open_project(root: str):
    project = _project(root)
    CURRENT_PROJECT["root"] = str(project.root)
    return (str(project.root), str(project.root), *dataset_view(str(project.root)), *train_form_values(str(project.root)))


def restore_project():
    """On page load: the project last opened (a local, single-user app), so a reload re-attaches to it."""
    return open_project(CURRENT_PROJECT["root"])


@_user_errors
def upload_images(root: str, files: list | None):
    project = _project(root)
    added = [project.add_image(Path(f), Path(f).name) for f in files or []]
    new = sum(a is not None for a in added)
    gr.Info(f"Added {new} image(s); {len(added) - new} already there.")
    return dataset_view(root)


@_user_errors
def import_folder(root: str, folder: str):
    added = _project(root).import_folder(Path(folder))
    gr.Info(f"Imported {len(added)} image(s).")
    return dataset_view(root)


def select_image(root: str, event: gr.SelectData):
    name = _project(root).image_files()[event.index].name
    return name, _project(root).read_caption(name)


@_user_errors
def set_caption(root: str, name: str, caption: str):
    _project(root).write_caption(name, caption)
    return dataset_view(root)


@_user_errors
def bulk_caption(root: str, trigger: str, find: str, replace: str, strip: str):
    project = _project(root)
    changed = 0
    if trigger.strip():
        changed += project.bulk_edit(lambda c: projects.add_trigger_word(c, trigger))
    if find:
        changed += project.bulk_edit(lambda c: c.replace(find, replace))
    if strip.strip():
        changed += project.bulk_edit(lambda c: projects.strip_tags(c, strip.split(",")))
    gr.Info(f"{changed} caption edit(s).")
    return dataset_view(root)


# ---- Train tab ----------------------------------------------------------------------------------
def train_form_values(root: str) -> list:
    cfg = _project(root).load_config()
    return [widget_value(info, cfg) for info in form_options()]


@_user_errors
def apply_preset(root: str, preset: str):
    project = _project(root)
    current = project.load_config()
    cfg = load_config(preset=preset)
    if not cfg.model.path:
        cfg.model.path = current.model.path  # a preset without a model keeps the chosen one
    project.save_config(cfg)
    return train_form_values(root)


@_user_errors
def save_form(root: str, *values):
    project = _project(root)
    project.save_config(config_from_form(project.load_config(), list(values)))
    gr.Info("Config saved.")
    return plan_markdown(project)


@_user_errors
def start_training(root: str, *values):
    project = _project(root)
    latest = runs.latest_run(project)
    if latest is not None and runs.read_run(latest).state in ("starting", "running"):
        raise gr.Error(f"A run is already going ({latest.name}); stop it first.")
    cfg = config_from_form(project.load_config(), list(values))
    project.save_config(cfg)
    if not cfg.model.path:
        raise SdloraError("Choose a base model first: set model.path (Train tab) to a diffusers folder, a .safetensors "
                          "checkpoint or a hub id, or apply a preset that names one (demo-concept, demo-tiny).")
    return str(runs.start_run(project))


def _control(what: str):
    def send(root: str) -> str:
        latest = runs.latest_run(_project(root))
        if latest is None or runs.read_run(latest).state not in ("starting", "running"):
            return "No run is going."
        runs.send(latest, what)
        return f"Asked the run to {what} at the next step."

    send.__name__ = f"{what}_training"
    return send


@_user_errors
def poll(root: str):
    """What the Train tab shows about the latest run; reading it from disk re-attaches after a reload."""
    latest = runs.latest_run(_project(root))
    if latest is None:
        return progress_html(None), loss_frame([], []), "", [], "idle"
    view = runs.read_run(latest)
    return progress_html(view), loss_frame(view.losses, view.validation), run_log(view), view.samples, view.state


def loss_frame(losses: list, validation: list):
    """Training and validation loss as one long table; numeric columns even when empty (the plot keeps
    the axis type of its first data)."""
    import pandas as pd

    rows = [(s, v, "train") for s, v in losses] + [(s, v, "validation") for s, v in validation]
    frame = pd.DataFrame(rows, columns=["step", "loss", "series"])
    return frame.astype({"step": "int64", "loss": "float64", "series": "str"})


# ---- Export tab ---------------------------------------------------------------------------------
def saved_adapters(root: str) -> list[str]:
    files = _project(root).runs.glob("*/*.safetensors")
    return [str(p) for p in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)]


def refresh_adapters(root: str):
    choices = saved_adapters(root)
    return gr.Dropdown(choices=choices, value=choices[0] if choices else None)


@_user_errors
def export_adapter(root: str, adapter: str, layout: str = "kohya", dtype: str = "fp16"):
    """Write the chosen adapter in `layout`/`dtype` beside it, check it against the project's model."""
    from sdlora.export.convert import export_lora_file

    project = _project(root)
    source = Path(adapter or "").resolve()
    if not adapter or project.runs.resolve() not in source.parents or not source.is_file():
        raise gr.Error("Pick a saved adapter of this project first.")
    target = _unused(source.parent / "export" / f"{source.stem}-{layout}-{dtype}.safetensors")
    target.parent.mkdir(exist_ok=True)
    report = export_lora_file(source, target, layout, dtype, base=project.load_config().model.path)
    return str(target), "```\n" + report.text() + "\n```"


def _unused(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate, n = path.with_name(f"{path.stem}-{n}{path.suffix}"), n + 1
    return candidate


# ---- Layout -------------------------------------------------------------------------------------
def build_app(project_root: Path, workspace: Path | None = None) -> gr.Blocks:
    global WORKSPACE
    WORKSPACE = Path(workspace).resolve() if workspace is not None else None
    root = str(Path(project_root).resolve())
    CURRENT_PROJECT["root"] = root
    with gr.Blocks(title="sdlora") as app:
        gr.Markdown("# sdlora — train a LoRA")
        root_state = gr.State(root)
        with gr.Row():
            root_box = gr.Textbox(value=root, label="Project folder", scale=4,
                                  info="A folder with project.toml, images/ and runs/; created when new.")
            open_button = gr.Button("Open / create project", scale=1)
        with gr.Tab("Dataset"):
            dataset_outputs = _dataset_tab(root_state)
        with gr.Tab("Train"):
            form_widgets = _train_tab(root_state, root)
        with gr.Tab("Export"):
            _export_tab(root_state)
        with gr.Tab("Blend"):
            from ui.blend_tab import blend_tab  # here, not at the top: blend_tab imports this module

            blend_tab(root_state)
        open_button.click(open_project, [root_box], [root_box, root_state, *dataset_outputs, *form_widgets],
                          api_name="open_project")
        app.load(_user_errors(restore_project), [], [root_box, root_state, *dataset_outputs, *form_widgets])
    return app


def _dataset_tab(root_state) -> list:
    with gr.Row():
        upload = gr.File(file_count="multiple", file_types=["image"], label="Add images (drop many at once)",
                         elem_id="dataset-upload")
        with gr.Column():
            folder_box = gr.Textbox(label="…or import from a folder on this machine")
            import_button = gr.Button("Import folder")
    gallery = gr.Gallery(label="Images (click one to edit its caption)", columns=6, height=320, allow_preview=False,
                         elem_id="dataset-gallery")
    with gr.Row():
        name_box = gr.Textbox(label="Image", interactive=False)
        caption_box = gr.Textbox(label="Caption", scale=3, elem_id="caption-box")
        save_caption = gr.Button("Save caption")
    with gr.Accordion("Bulk caption tools", open=False):
        with gr.Row():
            trigger = gr.Textbox(label="Add trigger word (as first tag)", elem_id="trigger-box")
            find = gr.Textbox(label="Find")
            replace = gr.Textbox(label="Replace with")
            strip = gr.Textbox(label="Remove tags (comma separated)")
        bulk_button = gr.Button("Apply to all captions")
    with gr.Row():
        tags = gr.Dataframe(headers=["tag", "count"], label="Tag frequency", interactive=False)
        with gr.Column(scale=2):
            plan = gr.Markdown(elem_id="dataset-plan")
            full_plan = gr.Button("Full plan (LR curve and memory estimate)", size="sm")
    outputs = [gallery, tags, plan]
    full_plan.click(_user_errors(lambda root: plan_markdown(_project(root), full=True)), [root_state], [plan],
                    api_name="full_plan")
    upload.upload(upload_images, [root_state, upload], outputs, api_name="upload_images")
    import_button.click(import_folder, [root_state, folder_box], outputs, api_name="import_folder")
    gallery.select(select_image, [root_state], [name_box, caption_box])
    save_caption.click(set_caption, [root_state, name_box, caption_box], outputs, api_name="set_caption")
    bulk_button.click(bulk_caption, [root_state, trigger, find, replace, strip], outputs, api_name="bulk_caption")
    return outputs


def _train_tab(root_state, root: str) -> list:
    presets = sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))
    cfg = _project(root).load_config()
    with gr.Row():
        preset = gr.Dropdown(presets, value=presets[0] if presets else None, label="Preset", scale=3)
        preset_button = gr.Button("Apply preset", scale=1)
    widgets = _config_form(cfg)
    model_info = gr.Markdown(describe_model(cfg.model.path))
    with gr.Row():
        start = gr.Button("Start", variant="primary")
        stop = gr.Button("Stop")
        save_now = gr.Button("Save now")
        sample_now = gr.Button("Sample now")
        save_config = gr.Button("Save config")
    state = gr.Textbox(label="Run state", interactive=False, elem_id="run-state")
    progress = gr.HTML()
    with gr.Row():
        loss_plot = gr.LinePlot(x="step", y="loss", color="series", title="Loss", height=260)
        previews = gr.Gallery(label="Previews (newest first)", columns=4, height=260, elem_id="previews")
    log = gr.Textbox(label="Log", lines=8, max_lines=8, interactive=False, autoscroll=True)
    notice = gr.Markdown()
    plan = gr.Markdown()
    model_widget = widgets[[o.key for o in form_options()].index("model.path")]
    model_widget.change(describe_model, [model_widget], [model_info])
    preset_button.click(apply_preset, [root_state, preset], widgets, api_name="apply_preset")
    save_config.click(save_form, [root_state, *widgets], [plan], api_name="save_config")
    start.click(start_training, [root_state, *widgets], [notice], api_name="start_training")
    for button, what in ((stop, "stop"), (save_now, "save"), (sample_now, "sample")):
        button.click(_control(what), [root_state], [notice], api_name=f"{what}_training")
    timer = gr.Timer(POLL_SECONDS)
    outputs = [progress, loss_plot, log, previews, state]
    timer.tick(poll, [root_state], outputs, api_name="poll", show_progress="hidden")
    return widgets


def _config_form(cfg) -> list:
    widgets = []
    infos = form_options()
    for section in dict.fromkeys(o.section for o in infos):
        with gr.Accordion(section, open=section in ("model", "lora", "train")):
            basic = [o for o in infos if o.section == section and not o.advanced]
            advanced = [o for o in infos if o.section == section and o.advanced]
            by_key = {}
            with gr.Row(equal_height=False):
                for info in basic:
                    by_key[info.key] = widget_for(info, widget_value(info, cfg))
            if advanced:
                with gr.Accordion(f"{section}: advanced", open=False):
                    with gr.Row(equal_height=False):
                        for info in advanced:
                            by_key[info.key] = widget_for(info, widget_value(info, cfg))
            widgets += [by_key[o.key] for o in infos if o.section == section]
    return widgets


def _export_tab(root_state) -> None:
    with gr.Row():
        adapters = gr.Dropdown(label="Saved adapter", choices=[], scale=4)
        refresh = gr.Button("Refresh", scale=1)
    with gr.Row():
        layout = gr.Dropdown(["kohya", "diffusers"], value="kohya", label="Format",
                             info="kohya loads in A1111, Forge, ComfyUI and diffusers; diffusers only in diffusers.")
        dtype = gr.Dropdown(["fp16", "bf16", "fp32"], value="fp16", label="Precision",
                            info="fp16 halves the file size and is what A1111/ComfyUI users expect.")
    export = gr.Button("Export and check", variant="primary")
    download = gr.File(label="Adapter file", elem_id="adapter-file")
    report = gr.Markdown(elem_id="check-report")
    refresh.click(refresh_adapters, [root_state], [adapters], api_name="list_adapters")
    export.click(export_adapter, [root_state, adapters, layout, dtype], [download, report], api_name="export_adapter")
