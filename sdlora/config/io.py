"""Validation, TOML load/dump, presets and `--set` overrides for TrainConfig."""
from __future__ import annotations

import dataclasses
import difflib
import json
import tomllib
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..fsutil import atomic_write_text
from .fields import OptionInfo
from .schema import CONFIG_VERSION, SECTION_NAMES, TrainConfig

PRESETS_DIR = Path(__file__).resolve().parent.parent.parent / "presets"
# Options holding filesystem paths: relative values in a config file are taken from that file's folder.
PATH_OPTIONS = ("model.path", "data.path", "dreambooth.class_data_dir", "validation.path")


def options() -> list[OptionInfo]:
    """Every option of the schema, in declaration order."""
    result = []
    for section_field in dataclasses.fields(TrainConfig):
        if section_field.name not in SECTION_NAMES:
            continue
        for f in dataclasses.fields(section_field.default_factory):
            meta = f.metadata
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            result.append(
                OptionInfo(
                    section=section_field.name,
                    name=f.name,
                    type=_field_type(f),
                    default=default,
                    help=meta["help"],
                    choices=meta["choices"],
                    min=meta["min"],
                    max=meta["max"],
                    advanced=meta["advanced"],
                    item_type=meta["item_type"],
                )
            )
    return result


def _field_type(f: dataclasses.Field) -> type:
    names = {"str": str, "int": int, "float": float, "bool": bool, "list": list}
    return names[f.type] if isinstance(f.type, str) else f.type


def option_map() -> dict[str, OptionInfo]:
    return {o.key: o for o in options()}


def _closest(name: str, candidates) -> str:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.5)
    return f" Did you mean '{match[0]}'?" if match else ""


def check_value(info: OptionInfo, value: Any) -> Any:
    """Return `value` converted to the option's type, or raise ConfigError naming what is allowed."""
    value = _coerce_type(info, value)
    if info.choices is not None and value not in info.choices:
        allowed = ", ".join(repr(c) for c in info.choices)
        raise ConfigError(f"{info.key} = {value!r} is not allowed; choose one of {allowed}.")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if info.min is not None and value < info.min:
            raise ConfigError(f"{info.key} = {value!r} is below the minimum {info.min}.")
        if info.max is not None and value > info.max:
            raise ConfigError(f"{info.key} = {value!r} is above the maximum {info.max}.")
    return value


def _coerce_type(info: OptionInfo, value: Any) -> Any:
    expected = info.type
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is list and dataclasses.is_dataclass(info.item_type):
        if not isinstance(value, list):
            raise ConfigError(f"{info.key} must be a list of tables ([[{info.key}]]), got {value!r}.")
        return [table_entry(info.item_type, f"{info.key}[{i}]", item) for i, item in enumerate(value)]
    if expected is list:
        if not isinstance(value, list) or not all(isinstance(v, info.item_type) for v in value):
            raise ConfigError(
                f"{info.key} must be a list of {info.item_type.__name__}, got {value!r}."
            )
        return list(value)
    if type(value) is not expected:
        raise ConfigError(
            f"{info.key} must be {expected.__name__}, got {type(value).__name__} {value!r}."
        )
    return value


def entry_options(entry_class, prefix: str) -> dict[str, OptionInfo]:
    """The options of a list-of-tables item class (e.g. DatasetEntry), keyed by field name."""
    result = {}
    for f in dataclasses.fields(entry_class):
        meta = f.metadata
        result[f.name] = OptionInfo(
            section=prefix, name=f.name, type=_field_type(f), default=f.default, help=meta["help"],
            choices=meta["choices"], min=meta["min"], max=meta["max"], advanced=meta["advanced"],
            item_type=meta["item_type"],
        )
    return result


def table_entry(entry_class, prefix: str, table: Any):
    """One validated item of a list of tables; unknown keys name the closest valid key."""
    if isinstance(table, entry_class):
        table = dataclasses.asdict(table)
    if not isinstance(table, dict):
        raise ConfigError(f"{prefix} must be a table of options, got {table!r}.")
    known = entry_options(entry_class, prefix)
    values = {}
    for name, value in table.items():
        if name not in known:
            raise ConfigError(f"Unknown config key '{prefix}.{name}'." + _closest(name, known))
        values[name] = check_value(known[name], value)
    return entry_class(**values)


def from_dict(data: dict) -> TrainConfig:
    """Build a validated TrainConfig from nested dicts; unknown keys and bad values raise ConfigError."""
    data = migrate(dict(data))
    known = option_map()
    sections: dict[str, dict] = {name: {} for name in SECTION_NAMES}
    for section, body in data.items():
        if section == "config_version":
            continue
        if section not in SECTION_NAMES:
            raise ConfigError(
                f"Unknown config section [{section}]; sections are {', '.join(SECTION_NAMES)}."
                + _closest(section, SECTION_NAMES)
            )
        if not isinstance(body, dict):
            raise ConfigError(f"[{section}] must be a table of options, got {body!r}.")
        for name, value in body.items():
            key = f"{section}.{name}"
            if key not in known:
                raise ConfigError(f"Unknown config key '{key}'." + _closest(key, known))
            sections[section][name] = check_value(known[key], value)
    cfg = TrainConfig(**{name: _section_class(name)(**values) for name, values in sections.items()})
    check_consistency(cfg)
    return cfg


def _section_class(name: str):
    return {f.name: f.default_factory for f in dataclasses.fields(TrainConfig)}[name]


def check_consistency(cfg: TrainConfig) -> None:
    """Rules that involve more than one option."""
    if cfg.data.resolution % 8:
        raise ConfigError(
            f"data.resolution = {cfg.data.resolution} must be a multiple of 8 (the VAE downsamples by 8)."
        )
    if cfg.sample.size % 8:
        raise ConfigError(f"sample.size = {cfg.sample.size} must be a multiple of 8.")
    check_dreambooth(cfg.dreambooth)
    if cfg.data.missing_caption == "default" and not cfg.data.default_caption.strip():
        raise ConfigError(
            "data.missing_caption = 'default' needs data.default_caption to be set to a caption."
        )
    _check_data_sources(cfg.data)


def _check_data_sources(data) -> None:
    if data.path and data.datasets:
        raise ConfigError("Set either data.path or data.datasets, not both (put the folder into data.datasets).")
    for i, entry in enumerate(data.datasets):
        if not entry.path:
            raise ConfigError(f"data.datasets[{i}].path is empty: set it to a folder of training images.")
        if entry.resolution % 8:
            raise ConfigError(f"data.datasets[{i}].resolution = {entry.resolution} must be a multiple of 8.")
        mode = entry.missing_caption or data.missing_caption
        if mode == "default" and not (entry.default_caption or data.default_caption).strip():
            raise ConfigError(f"data.datasets[{i}] uses missing_caption = 'default' but has no default_caption.")
    if data.bucket_step % 8:
        raise ConfigError(f"data.bucket_step = {data.bucket_step} must be a multiple of 8.")
    if data.min_bucket_side and data.max_bucket_side and data.min_bucket_side > data.max_bucket_side:
        raise ConfigError(
            f"data.min_bucket_side = {data.min_bucket_side} is larger than data.max_bucket_side = {data.max_bucket_side}."
        )


def check_dreambooth(db) -> None:
    if not db.enabled:
        return
    if not db.instance_prompt.strip():
        raise ConfigError("dreambooth.enabled needs dreambooth.instance_prompt, e.g. 'a photo of sks dog'.")
    if db.prior_preservation and not db.class_prompt.strip() and not db.class_data_dir:
        raise ConfigError(
            "dreambooth.prior_preservation needs dreambooth.class_prompt (e.g. 'a photo of a dog') to caption and "
            "generate class images, or dreambooth.class_data_dir with captioned class images."
        )


def migrate(data: dict) -> dict:
    """Bring an older config to CONFIG_VERSION; there are no older versions yet."""
    version = data.get("config_version", CONFIG_VERSION)
    if not isinstance(version, int) or version > CONFIG_VERSION or version < 1:
        raise ConfigError(
            f"config_version = {version!r} is not supported; this sdlora reads versions 1..{CONFIG_VERSION}."
        )
    return data


def to_dict(cfg: TrainConfig) -> dict:
    return dataclasses.asdict(cfg)


def deep_merge(base: dict, overlay: dict) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_toml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Config file not found: {path}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.toml"
    if not path.is_file():
        available = sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))
        raise ConfigError(
            f"Unknown preset '{name}'; presets are {', '.join(available)}." + _closest(name, available)
        )
    return path


def load_layer(path: Path) -> dict:
    """One TOML file as a dict, with its `preset = "..."` base applied and paths made absolute."""
    data = read_toml(path)
    data = _absolutize_paths(data, path.parent)
    base_name = data.pop("preset", None)
    if base_name is not None:
        if not isinstance(base_name, str):
            raise ConfigError(f"'preset' in {path} must be a preset name, got {base_name!r}.")
        data = deep_merge(load_layer(preset_path(base_name)), data)
    return data


def _absolutize_paths(data: dict, folder: Path) -> dict:
    for key in PATH_OPTIONS:
        section, name = key.split(".")
        table = data.get(section, {})
        if isinstance(table, dict):
            table_path_to_absolute(table, name, folder)
    entries = data.get("data", {}).get("datasets") if isinstance(data.get("data"), dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict):
            table_path_to_absolute(entry, "path", folder)
    return data


def table_path_to_absolute(table: dict, name: str, folder: Path) -> None:
    value = table.get(name)
    if isinstance(value, str) and value and not value.startswith("builtin:"):
        candidate = folder / value
        if not Path(value).is_absolute() and candidate.exists():
            table[name] = str(candidate.resolve())


def parse_override(text: str) -> tuple[str, Any]:
    """'section.key=value' -> ('section.key', typed value); the value is read as TOML when it parses."""
    if "=" not in text:
        raise ConfigError(f"--set expects section.key=value, got {text!r}.")
    key, raw = (part.strip() for part in text.split("=", 1))
    known = option_map()
    if key not in known:
        raise ConfigError(f"Unknown config key '{key}' in --set." + _closest(key, known))
    info = known[key]
    if info.type is str:
        return key, raw
    try:
        return key, tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        raise ConfigError(f"--set {key}={raw}: {raw!r} is not a valid {info.type.__name__}.") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides:
        key, value = parse_override(text)
        section, name = key.split(".")
        data = deep_merge(data, {section: {name: value}})
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = (), preset: str | None = None) -> TrainConfig:
    """Defaults <- preset <- config file <- --set overrides, validated."""
    data: dict = {}
    if preset:
        data = load_layer(preset_path(preset))
    if path is not None:
        data = deep_merge(data, load_layer(Path(path)))
    return from_dict(apply_overrides(data, list(overrides)))


def dump_toml(cfg: TrainConfig) -> str:
    """The fully resolved config as TOML (every option written, so a run is reproducible)."""
    data = to_dict(cfg)
    lines = [f"config_version = {data.pop('config_version')}"]
    for section in SECTION_NAMES:
        lines.append(f"\n[{section}]")
        for name, value in data[section].items():
            lines.append(f"{name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an item of a list of tables, written inline so it stays in its section
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_config(cfg: TrainConfig, path: Path) -> None:
    atomic_write_text(path, dump_toml(cfg))


def config_hash(cfg: TrainConfig) -> str:
    import hashlib

    return hashlib.sha256(dump_toml(cfg).encode()).hexdigest()[:16]
