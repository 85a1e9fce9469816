"""The bad-input matrix: each kind of bad input gives a clear message and a non-zero exit, and
nothing of the user's data (images, captions, model, earlier outputs) is lost or modified.

Kinds covered elsewhere (not repeated here), 38:
  images (tests/test_data_lint.py): zero-byte, text with an image extension, HTML saved as .jpg,
    truncated PNG, truncated JPEG, missing caption, plus 8 warning kinds (tiny, duplicate,
    long caption, unicode name, empty caption, wrong extension, orphan caption, ignored format)
  data folders (tests/test_cli_errors.py): missing folder, folder without images
  configs (tests/test_config.py, test_cli_errors.py): unknown key (closest named), unknown section,
    zero rank, wrong type (str for int, str for bool, ints in a list of str), value not in
    choices, negative LR, resolution not a multiple of 8, missing default caption, unsupported
    config_version, invalid TOML, missing config file, unknown preset, untyped --set, data.path
    together with data.datasets (tests/test_data_scan.py)
  model paths (tests/test_models.py, test_cli_errors.py): empty, missing, hub id offline,
    unknown builtin, folder that is not a model, single-file checkpoint, SDXL
Added here, 17: zero / negative values through the CLI (3), wrong TOML types (3), conflicting
options (3), data.path that is a file, damaged model folder, pickle .ckpt, wrong family for the
model, read-only output folder, disk full during an adapter save and during a state save, and a
resume whose config changed (see also tests/test_resume.py).
"""
from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from sdlora.cli import main
from sdlora.config import load_config, write_config


def _snapshot(*folders: Path) -> dict:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for folder in folders for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.fixture
def user_files(tiny_sd15, image_folder):
    """The user's data; the test asserts at the end that none of it changed."""
    before = _snapshot(tiny_sd15, image_folder)
    yield
    assert _snapshot(tiny_sd15, image_folder) == before


def _train_args(tmp_path, tiny_sd15, image_folder, *sets: str, output: str = "run") -> list[str]:
    args = ["train", "--preset", "demo-tiny", "--quiet", "--output", str(tmp_path / output),
            "--set", f"model.path={tiny_sd15}", "--set", f"data.path={image_folder}", "--set", "sample.prompts=[]"]
    for item in sets:
        args += ["--set", item]
    return args


def _assert_user_error(capsys, code: int, *fragments: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.mark.parametrize("setting, fragment", [
    ("train.batch_size=0", "train.batch_size = 0 is below the minimum 1"),
    ("train.gradient_accumulation=0", "train.gradient_accumulation = 0 is below the minimum 1"),
    ("train.max_steps=-5", "train.max_steps = -5 is below the minimum 0"),
])
def test_zero_and_negative_values(tmp_path, tiny_sd15, image_folder, user_files, capsys, setting, fragment):
    _assert_user_error(capsys, main(_train_args(tmp_path, tiny_sd15, image_folder, setting)), fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("body, fragment", [
    ('[train]\nbatch_size = "two"\n', "train.batch_size must be int, got str 'two'"),
    ("[lora]\nrank = 4.5\n", "lora.rank must be int, got float 4.5"),
    ('[data]\nrandom_flip = "yes"\n', "data.random_flip must be bool"),
])
def test_wrong_types_in_a_config_file(tmp_path, capsys, body, fragment):
    config = tmp_path / "config.toml"
    config.write_text(body)
    _assert_user_error(capsys, main(["train", str(config), "--output", str(tmp_path / "run")]), fragment)
    assert config.read_text() == body


@pytest.mark.parametrize("sets, fragment", [
    (["data.datasets=[{path = 'x'}]"], "Set either data.path or data.datasets, not both"),
    (["data.min_bucket_side=512", "data.max_bucket_side=256"], "larger than data.max_bucket_side"),
    (["train.mixed_precision=fp16", "train.device=cpu"], "'fp16' needs a CUDA GPU"),
])
def test_conflicting_options(tmp_path, tiny_sd15, image_folder, user_files, capsys, sets, fragment):
    _assert_user_error(capsys, main(_train_args(tmp_path, tiny_sd15, image_folder, *sets)), fragment)


def test_data_path_is_a_file(tmp_path, tiny_sd15, image_folder, user_files, capsys):
    image = next(image_folder.glob("*.png"))
    code = main(_train_args(tmp_path, tiny_sd15, image_folder, f"data.path={image}"))
    _assert_user_error(capsys, code, str(image))


def test_damaged_model_folder(tmp_path, tiny_sd15, image_folder, user_files, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model_index.json").write_text("not json")
    code = main(_train_args(tmp_path, tiny_sd15, image_folder, f"model.path={model}"))
    _assert_user_error(capsys, code, "model_index.json is not valid JSON")
    assert (model / "model_index.json").read_text() == "not json"


def test_pickle_checkpoint_is_not_loaded(tmp_path, tiny_sd15, image_folder, user_files, capsys):
    """A .ckpt is a pickle: it can run code when loaded, so it is never unpickled implicitly."""
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"\x80\x04not really a pickle")
    code = main(_train_args(tmp_path, tiny_sd15, image_folder, f"model.path={ckpt}"))
    _assert_user_error(capsys, code, str(ckpt))
    assert ckpt.read_bytes() == b"\x80\x04not really a pickle"


def test_explicit_family_that_does_not_fit_the_model(tmp_path, tiny_sd15, tiny_sd2v, image_folder, user_files, capsys):
    """An SD2 model with model.family = 'sd15' is an error (a wrong family tags the LoRA for the
    wrong base); presets set no family, so an sd15-* preset on an SD2 model simply trains SD2."""
    code = main(_train_args(tmp_path, tiny_sd15, image_folder, f"model.path={tiny_sd2v}", "model.family=sd15"))
    _assert_user_error(capsys, code, "model.family = 'sd15'", "'sd2-v'", "model.family = 'auto'")


def test_read_only_output_folder(tmp_path, tiny_sd15, image_folder, user_files, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # root ignores the mode: make the folder refuse writes ourselves
        real_mkdir = os.mkdir

        def refusing_mkdir(path, *args, **kwargs):
            if str(path).startswith(str(locked)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", refusing_mkdir)
    try:
        code = main(_train_args(tmp_path, tiny_sd15, image_folder, output="locked/run"))
    finally:
        locked.chmod(0o755)
    _assert_user_error(capsys, code, "permission denied", "writable --output folder")


def _config(tiny_sd15, image_folder, *extra):
    return load_config(None, [f"model.path={tiny_sd15}", f"data.path={image_folder}", "data.resolution=64",
                              "lora.rank=4", "optim.optimizer=adamw", "train.device=cpu", *extra])


def test_disk_full_during_an_adapter_save_keeps_the_earlier_file(tmp_path, tiny_sd15, image_folder, user_files,
                                                                 monkeypatch):
    from sdlora.errors import SdloraError
    from sdlora.events import read_events
    from sdlora.train.run import run_training

    run = tmp_path / "run"
    run.mkdir()
    earlier = run / "lora-step000002.safetensors"  # a good file from before, where the new one goes
    earlier.write_bytes(b"earlier adapter bytes")
    real_write = Path.write_bytes

    def full_disk(self, data):
        if self.name.startswith(".lora-step000002"):
            real_write(self, data[: len(data) // 2])  # half written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(SdloraError, match="the disk is full"):
        run_training(_config(tiny_sd15, image_folder, "train.max_steps=3", "save.every_n_steps=1"), run, progress=False)
    assert earlier.read_bytes() == b"earlier adapter bytes"
    assert (run / "lora-step000001.safetensors").is_file() and list(run.glob(".*.tmp")) == []
    failed = list(read_events(run / "events.jsonl"))[-1]
    assert failed["type"] == "failed" and failed["user_error"] and "--resume" in failed["message"]


def test_disk_full_during_a_state_save_keeps_the_earlier_state(tmp_path, tiny_sd15, image_folder, user_files,
                                                               monkeypatch):
    import torch

    from sdlora.errors import SdloraError
    from sdlora.train.run import run_training
    from sdlora.train.state import list_states

    real_save = torch.save
    calls = []

    def full_disk(obj, path, *args, **kwargs):
        if Path(path).name == "optimizer.pt":
            calls.append(path)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    run = tmp_path / "run"
    cfg = _config(tiny_sd15, image_folder, "train.max_steps=3", "save.state_every_n_steps=1")
    with pytest.raises(SdloraError, match="the disk is full"):
        run_training(cfg, run, progress=False)
    assert [p.name for p in list_states(run)] == ["step-000001"]
    assert list((run / "state").glob(".*")) == []


def test_resume_with_a_changed_config_lists_the_keys(tmp_path, tiny_sd15, image_folder, user_files, capsys):
    run = tmp_path / "run"
    run.mkdir()
    write_config(_config(tiny_sd15, image_folder), run / "config.toml")
    code = main(["train", "--resume", str(run), "--set", "optim.learning_rate=0.5", "--set", "data.resolution=128"])
    _assert_user_error(capsys, code, "optim.learning_rate: 0.0001 -> 0.5", "data.resolution: 64 -> 128")
