"""Form fields built from the config schema's metadata: one widget per option, help as info text."""
from __future__ import annotations

from sdlora.config import OptionInfo, TrainConfig, from_dict, options, to_dict

# Set by the page itself, not typed into the form.
PAGE_MANAGED = ("data.path",)
SCALAR_LIST_ITEMS = (str, int, float)


def form_options() -> list[OptionInfo]:
    return [
        o for o in options()
        if o.key not in PAGE_MANAGED and (o.type is not list or o.item_type in SCALAR_LIST_ITEMS)
    ]


def widget_for(info: OptionInfo, value):
    import gradio as gr

    common = dict(label=info.key, info=info.help, min_width=220)
    if info.type is bool:
        return gr.Checkbox(value=value, **common)
    if info.choices:
        return gr.Dropdown(choices=list(info.choices), value=value, **common)
    if info.type is list:
        common["info"] += " One per line."
        return gr.Textbox(value="\n".join(map(str, value)), lines=3, **common)
    if info.type in (int, float):
        return gr.Number(value=value, minimum=info.min, maximum=info.max, precision=0 if info.type is int else None,
                         **common)
    return gr.Textbox(value=value, **common)


def widget_value(info: OptionInfo, cfg: TrainConfig):
    value = getattr(getattr(cfg, info.section), info.name)
    return "\n".join(map(str, value)) if info.type is list else value


def config_from_form(base: TrainConfig, values: list) -> TrainConfig:
    """The base config with every form value put in, validated by the schema (ConfigError on bad input)."""
    data = to_dict(base)
    for info, value in zip(form_options(), values):
        data[info.section][info.name] = _from_widget(info, value)
    return from_dict(data)


def _from_widget(info: OptionInfo, value):
    if info.type is list:
        items = [line.strip() for line in (value or "").splitlines() if line.strip()]
        return [info.item_type(item) for item in items]
    if info.type is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if info.type is float and isinstance(value, int):
        return float(value)
    return value
