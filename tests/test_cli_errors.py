"""Bad input through the real CLI: a clear one-line error, exit code 2, no traceback, nothing lost."""
from __future__ import annotations

import time

import pytest

from tests.conftest import REPO, run_cli


def _write_config(tmp_path, body: str):
    path = tmp_path / "config.toml"
    path.write_text(body)
    return path


def _assert_user_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_help_is_fast_and_imports_no_torch():
    import subprocess
    import sys

    started = time.perf_counter()
    result = run_cli("--help")
    assert result.returncode == 0 and "train" in result.stdout
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, sdlora.cli; sdlora.cli.build_parser(); print('torch' in sys.modules)"],
        capture_output=True, text=True,
    )
    assert probe.stdout.strip() == "False"
    assert time.perf_counter() - started < 10  # generous: a torch import alone is ~2 s


@pytest.fixture
def tiny_model_arg(tiny_sd15):
    return f"model.path={tiny_sd15}"


def test_missing_data_folder(tmp_path, tiny_model_arg):
    result = run_cli("train", "--preset", "demo-tiny", "--set", tiny_model_arg,
                     "--set", f"data.path={tmp_path / 'nope'}", "--output", str(tmp_path / "run"))
    _assert_user_error(result, "Data folder not found", "data.path")


def test_folder_without_images(tmp_path, tiny_model_arg):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    result = run_cli("train", "--preset", "demo-tiny", "--set", tiny_model_arg,
                     "--set", f"data.path={tmp_path / 'empty'}", "--output", str(tmp_path / "run"))
    _assert_user_error(result, "No images in", ".png")


def test_image_without_caption_fails_or_uses_the_default(tmp_path, image_folder, tiny_model_arg):
    (image_folder / "001.txt").unlink()
    result = run_cli("train", "--preset", "demo-tiny", "--set", tiny_model_arg, "--set", f"data.path={image_folder}",
                     "--output", str(tmp_path / "run"))
    _assert_user_error(result, "1 image(s)", "001.png", "data.missing_caption")
    # With a default caption configured the same folder trains, and the caption file is not created.
    result = run_cli("train", "--preset", "demo-tiny", "--set", tiny_model_arg, "--set", f"data.path={image_folder}",
                     "--set", "data.missing_caption=default", "--set", "data.default_caption=a shape",
                     "--set", "train.max_steps=1", "--set", "sample.prompts=[]",
                     "--output", str(tmp_path / "run2"), "--quiet")
    assert result.returncode == 0, result.stderr
    assert not (image_folder / "001.txt").exists()


def test_unknown_config_key_names_the_closest(tmp_path):
    config = _write_config(tmp_path, "[train]\nmax_step = 5\n")
    _assert_user_error(run_cli("train", str(config)), "Unknown config key 'train.max_step'", "Did you mean 'train.max_steps'")


def test_out_of_range_value(tmp_path):
    config = _write_config(tmp_path, "[lora]\nrank = -3\n")
    _assert_user_error(run_cli("train", str(config)), "lora.rank = -3 is below the minimum 1")


def test_missing_model_path(tmp_path, image_folder):
    result = run_cli("train", "--preset", "demo-tiny", "--set", f"model.path={tmp_path / 'no-model'}",
                     "--set", f"data.path={image_folder}", "--output", str(tmp_path / "run"))
    _assert_user_error(result, "Model path not found", "diffusers folder")
    events = (tmp_path / "run" / "events.jsonl").read_text()
    assert '"type": "failed"' in events and '"user_error": true' in events


def test_missing_config_file_and_bad_preset(tmp_path):
    _assert_user_error(run_cli("train", str(tmp_path / "none.toml")), "Config file not found")
    _assert_user_error(run_cli("train", "--preset", "sd15-charcter"), "Unknown preset 'sd15-charcter'",
                       "Did you mean 'sd15-character'")


def test_config_command_prints_the_resolved_config():
    result = run_cli("config", str(REPO / "presets" / "demo-tiny.toml"), "--set", "lora.rank=2")
    assert result.returncode == 0
    assert "[lora]\nrank = 2\n" in result.stdout and "config_version = 1" in result.stdout
