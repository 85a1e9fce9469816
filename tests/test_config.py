"""The one schema: defaults, validation messages, TOML round trip, overrides and presets."""
from __future__ import annotations

import pytest

from sdlora.config import (
    PRESETS_DIR,
    TrainConfig,
    dump_toml,
    from_dict,
    load_config,
    option_map,
    options,
    to_dict,
)
from sdlora.errors import ConfigError


def test_every_option_has_help_and_a_valid_default():
    infos = options()
    assert len(infos) >= 40
    for info in infos:
        assert info.help.strip(), info.key
        if info.choices:
            assert info.default in info.choices, info.key
        if info.min is not None and not isinstance(info.default, list):
            assert info.min <= info.default <= info.max, info.key
    from_dict({})  # the defaults themselves validate


def test_toml_round_trip_keeps_every_value(tmp_path):
    cfg = load_config(
        None,
        ["lora.rank=8", "optim.learning_rate=3e-4", "sample.prompts=['a \"quoted\" cat', 'ünïcode']", "data.path=x y"],
    )
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(cfg))
    assert to_dict(load_config(path)) == to_dict(cfg)
    assert cfg.lora.rank == 8 and cfg.optim.learning_rate == 3e-4
    assert cfg.sample.prompts == ['a "quoted" cat', "ünïcode"]


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"lora": {"rnak": 4}}, "Unknown config key 'lora.rnak'. Did you mean 'lora.rank'?"),
        ({"loar": {"rank": 4}}, "Unknown config section [loar]"),
        ({"lora": {"rank": 0}}, "lora.rank = 0 is below the minimum 1"),
        ({"lora": {"rank": "big"}}, "lora.rank must be int, got str 'big'"),
        ({"train": {"mixed_precision": "fp8"}}, "train.mixed_precision = 'fp8' is not allowed; choose one of 'no', 'fp16', 'bf16'"),
        ({"optim": {"learning_rate": -1.0}}, "optim.learning_rate = -1.0 is below the minimum 0.0"),
        ({"train": {"gradient_checkpointing": "yes"}}, "train.gradient_checkpointing must be bool"),
        ({"data": {"resolution": 500}}, "data.resolution = 500 must be a multiple of 8"),
        ({"data": {"missing_caption": "default"}}, "needs data.default_caption"),
        ({"sample": {"prompts": [1, 2]}}, "sample.prompts must be a list of str"),
        ({"config_version": 99}, "config_version = 99 is not supported"),
    ],
)
def test_bad_values_are_named_with_what_is_allowed(data, expected):
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    assert expected in str(info.value)


def test_ints_are_accepted_for_float_options():
    assert from_dict({"lora": {"alpha": 8}}).lora.alpha == 8.0


def test_set_overrides_are_typed_and_checked():
    cfg = load_config(None, ["train.max_steps=7", "train.gradient_checkpointing=true", "model.path=a/b"])
    assert (cfg.train.max_steps, cfg.train.gradient_checkpointing, cfg.model.path) == (7, True, "a/b")
    with pytest.raises(ConfigError, match="Did you mean 'train.max_steps'"):
        load_config(None, ["train.max_step=7"])
    with pytest.raises(ConfigError, match="expects section.key=value"):
        load_config(None, ["train.max_steps"])
    with pytest.raises(ConfigError, match="not a valid int"):
        load_config(None, ["train.max_steps=seven"])


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="Config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[lora\nrank = 4")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


PRESETS = sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def test_required_presets_exist():
    assert {"sd15-character", "sd15-style", "sdxl-character", "sdxl-style", "demo-tiny", "demo-concept"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_is_a_valid_sparse_overlay(name):
    from sdlora.config.io import read_toml

    raw = read_toml(PRESETS_DIR / f"{name}.toml")
    known = option_map()
    written = [f"{section}.{key}" for section, body in raw.items() if isinstance(body, dict) for key in body]
    assert written and all(key in known for key in written)
    assert len(written) < len(known) / 2  # sparse: a preset states only what it changes
    cfg = load_config(preset=name)
    for key in written:
        section, field = key.split(".")
        assert getattr(getattr(cfg, section), field) == pytest.approx(raw[section][field])


def test_config_file_overlays_a_named_preset_and_relative_paths_resolve(tmp_path):
    (tmp_path / "imgs").mkdir()
    path = tmp_path / "mine.toml"
    path.write_text('preset = "sd15-character"\n[lora]\nrank = 8\n[data]\npath = "imgs"\n')
    cfg = load_config(path)
    assert cfg.lora.rank == 8  # file wins over preset
    assert cfg.lora.unet_targets == "attn-ff"  # from the preset
    assert cfg.data.path == str((tmp_path / "imgs").resolve())
    assert cfg.train.seed == TrainConfig().train.seed  # untouched default
