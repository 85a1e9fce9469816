"""The one config schema (see schema.py) and its loading, validation and TOML writing."""
from .fields import OptionInfo, option
from .io import (
    PRESETS_DIR,
    apply_overrides,
    check_value,
    config_hash,
    dump_toml,
    from_dict,
    load_config,
    option_map,
    options,
    parse_override,
    preset_path,
    to_dict,
    write_config,
)
from .schema import CONFIG_VERSION, TrainConfig

__all__ = [
    "CONFIG_VERSION",
    "OptionInfo",
    "PRESETS_DIR",
    "TrainConfig",
    "apply_overrides",
    "check_value",
    "config_hash",
    "dump_toml",
    "from_dict",
    "load_config",
    "option",
    "option_map",
    "options",
    "parse_override",
    "preset_path",
    "to_dict",
    "write_config",
]
