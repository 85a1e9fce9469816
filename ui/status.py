"""Text and HTML the page shows: model family, dataset plan, run progress, log."""
from __future__ import annotations

import html
from pathlib import Path

from sdlora.errors import SdloraError


def describe_model(path: str) -> str:
    """The family of a model path, read from config files only (no weights, no torch)."""
    from sdlora.models.family import FAMILY_NAMES, detect_family
    from sdlora.models.loading import BUILTIN_MODELS, BUILTIN_PREFIX

    if not path:
        return "**Model:** not set — a diffusers folder or `builtin:tiny-sd15`."
    if path.startswith(BUILTIN_PREFIX):
        family = BUILTIN_MODELS.get(path[len(BUILTIN_PREFIX):])
        if family is None:
            return f"**Model:** unknown built-in `{path}`."
        return f"**Model:** built-in tiny model — family `{family}` ({FAMILY_NAMES[family]})."
    folder = Path(path).expanduser()
    if not (folder / "model_index.json").is_file():
        return f"**Model:** `{path}` is not a local diffusers folder (hub ids load from the local cache only)."
    try:
        family = detect_family(folder)
    except SdloraError as exc:
        return f"**Model:** {exc}"
    return f"**Model:** family `{family}` ({FAMILY_NAMES[family]})."


def plan_markdown(project, full: bool = False) -> str:
    """The lint report and the dry-run plan of the project's config (what `sdlora lint` / `plan` print).

    `full` adds the LR curve and the memory estimate, which import torch; the quick form does not.
    """
    from sdlora.data.lint import lint_dataset
    from sdlora.data.plan import format_plan, make_plan

    cfg = project.load_config()
    report = lint_dataset(cfg.data)
    parts = [f"**Lint:** {len(report.errors)} error(s), {len(report.warnings)} warning(s)"
             f" in {report.images_checked} image(s)."]
    if report.issues:
        parts.append("```\n" + report.format() + "\n```")
    try:
        plan = make_plan(cfg, with_lr=full, with_memory=full)
    except SdloraError as exc:
        return "\n\n".join(parts + [f"**Plan:** {exc}"])
    parts.append(f"**Plan: {plan.total_steps} steps**\n```\n{format_plan(plan)}\n```")
    return "\n\n".join(parts)


def progress_html(view) -> str:
    if view is None:
        return "<p>No run yet. Press Start.</p>"
    percent = 100 * view.step / view.total if view.total else 0
    eta = int(view.eta_seconds)
    text = (f"step {view.step} / {view.total} · {view.it_per_s:.2f} it/s · ETA {eta // 60}:{eta % 60:02d} · "
            f"{html.escape(view.state)}")
    return (f'<div id="sdlora-progress" data-step="{view.step}" data-total="{view.total}">'
            f'<progress max="100" value="{percent:.1f}" style="width:100%"></progress><div>{text}</div></div>')


def run_log(view) -> str:
    lines = [f"run folder: {view.run_dir}"]
    lines += [f"saved: {p}" for p in view.saved]
    lines += view.messages
    if view.losses:
        step, loss = view.losses[-1]
        lines.append(f"step {step}: loss {loss:.4f}")
    if view.validation:
        step, loss = view.validation[-1]
        best_step, best = min(view.validation, key=lambda item: item[1])
        lines.append(f"validation loss at step {step}: {loss:.5f} (best {best:.5f} at step {best_step})")
    if view.error:
        lines.append("ERROR: " + view.error)
    return "\n".join(lines)
