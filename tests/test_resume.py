"""Exact resume: a training child killed (SIGKILL, also during a state save) or stopped (SIGINT) at
random steps and resumed each time ends with the uninterrupted run's adapter, bit for bit, and the
same step / epoch / loss history. Plus the NaN guard and the resume config rules."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import safe_open

from sdlora.config import load_config, write_config
from sdlora.errors import ConfigError, SdloraError, TrainingError
from sdlora.events import read_events, replayed
from sdlora.train.state import check_resumable_config, latest_state, list_states
from tests.conftest import REPO

# Everything that draws randomness or carries state across steps is on: LoRA dropout (torch CPU
# RNG), sampled latents + noise + timesteps (training generator), flips and tag shuffle/dropout
# (data order), warm-up + cosine (scheduler), AdamW8bit with 8-bit state for every tensor.
EXACT = [
    "data.resolution=64", "data.random_flip=true", "data.shuffle_tags=true", "data.tag_dropout_rate=0.3",
    "lora.rank=4", "lora.dropout=0.1", "optim.optimizer=adamw8bit", "optim.min_8bit_size=1",
    "optim.learning_rate=1e-3", "optim.lr_scheduler=cosine", "optim.lr_warmup_steps=2", "train.device=cpu",
    "train.seed=7",
]


def _config_file(tmp_path: Path, model: Path, images: Path, *extra: str) -> Path:
    cfg = load_config(None, [f"model.path={model}", f"data.path={images}", *EXACT, *extra])
    path = tmp_path / "config.toml"
    write_config(cfg, path)
    return path


def _start(*args: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, **(env_extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.Popen([sys.executable, "-m", "sdlora", "train", "--quiet", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _wait_until(proc: subprocess.Popen, condition, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the child ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the child")
        time.sleep(0.02)


def _last_step(run: Path) -> int:
    path = run / "events.jsonl"
    if not path.is_file():
        return 0
    steps = [e["step"] for e in read_events(path) if e["type"] == "step"]
    return steps[-1] if steps else 0


def _saving_now(run: Path) -> bool:
    """A state save is under way: its temp folder already holds the written trainer.json."""
    return any((p / "trainer.json").is_file() for p in (run / "state").glob(".step-*.tmp"))


def _tensors(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()  # noqa: SIM118 (safe_open is no dict)


def _history(run: Path) -> list[tuple]:
    events = replayed(list(read_events(run / "events.jsonl")))
    return [(e["step"], e["epoch"], e["loss"], e["lr"]) for e in events if e["type"] == "step"]


def _assert_same_result(reference: Path, resumed: Path, total: int) -> None:
    ref, ref_meta = _tensors(reference / "lora.safetensors")
    got, got_meta = _tensors(resumed / "lora.safetensors")
    assert ref.keys() == got.keys() and len(ref) > 0
    diff = max((ref[k].float() - got[k].float()).abs().max().item() for k in ref)
    assert diff == 0.0  # bit-identical
    assert all(ref[k].dtype == got[k].dtype for k in ref)
    for key in ("ss_steps", "ss_epoch", "ss_num_train_images"):
        assert ref_meta.get(key) == got_meta.get(key), key
    assert got_meta["ss_steps"] == str(total)
    history = _history(resumed)
    assert [h[0] for h in history] == list(range(1, total + 1))
    assert history == _history(reference)  # step, epoch, loss and lr of every step
    events = list(read_events(resumed / "events.jsonl"))
    assert events[-1]["type"] == "finished" and events[-1]["step"] == total and not events[-1]["stopped_early"]
    leftovers = list(resumed.glob(".*.tmp")) + list((resumed / "state").glob(".*.tmp"))
    assert leftovers == []


def test_sigkill_at_random_steps_and_during_a_save_resumes_bit_identically(tmp_path, tiny_sd15, image_folder):
    total = 12
    config = _config_file(tmp_path, tiny_sd15, image_folder, f"train.max_steps={total}",
                          "save.state_every_n_steps=3", "save.keep_states=2", "save.every_n_steps=5")
    rng = random.Random(2026)
    reference = tmp_path / "reference"
    rc, err = _finish(_start(str(config), "--output", str(reference)))
    assert rc == 0, err

    run = tmp_path / "run"
    kills = []
    # 1: a random step after the first state (step 3)
    proc = _start(str(config), "--output", str(run))
    kill_at = rng.randint(4, 5)
    _wait_until(proc, lambda: _last_step(run) >= kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kills.append(("step", _last_step(run)))
    # 2: inside a state save (the test hook holds the save open between writing and renaming)
    before = latest_state(run)
    proc = _start(str(config), "--resume", "latest", "--output", str(run),
                  env_extra={"SDLORA_TEST_SLOW_STATE_SAVE": "30"})
    _wait_until(proc, lambda: _saving_now(run))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kills.append(("save", _last_step(run)))
    assert list((run / "state").glob(".step-*.tmp")), "the kill should have landed inside the save"
    assert latest_state(run) == before  # the half-written state is not taken for a state
    # 3: a random later step, resuming from the run folder alone (its config.toml)
    kill_at = rng.randint(7, total - 2)
    proc = _start("--resume", str(run))
    _wait_until(proc, lambda: _last_step(run) >= kill_at and _resumed_count(run) == 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kills.append(("step", _last_step(run)))
    # the rest, uninterrupted
    rc, err = _finish(_start("--resume", str(run)))
    assert rc == 0, err

    print("kills (kind, last step event seen):", kills)
    resumed = [e for e in read_events(run / "events.jsonl") if e["type"] == "resumed"]
    assert len(resumed) == 3 and all(e["state"] for e in resumed)  # each went on from a saved state
    assert [e["step"] for e in resumed][:2] == [3, 3] and resumed[2]["step"] in (6, 9)
    _assert_same_result(reference, run, total)
    assert [p.name for p in list_states(run)] == ["step-000009", "step-000012"]  # keep_states = 2


def _resumed_count(run: Path) -> int:
    return sum(e["type"] == "resumed" for e in read_events(run / "events.jsonl"))


def test_sigint_at_random_points_with_gradient_accumulation(tmp_path, tiny_sd15, image_folder):
    total = 8
    config = _config_file(tmp_path, tiny_sd15, image_folder, f"train.max_steps={total}",
                          "train.gradient_accumulation=2", "save.state_every_n_steps=0")
    reference = tmp_path / "reference"
    rc, err = _finish(_start(str(config), "--output", str(reference)))
    assert rc == 0, err

    run = tmp_path / "run"
    # Stop points leave >= 3 steps to go: on an idle machine a step takes well under a second, and a
    # SIGINT that lands after the last step would just see the run finish.
    stops = sorted(random.Random(3).sample(range(1, total - 3), 3))
    for i, stop_at in enumerate(stops):
        args = [str(config), "--output", str(run)] + (["--resume"] if i else [])
        proc = _start(*args)
        _wait_until(proc, lambda stop_at=stop_at, i=i: _last_step(run) >= stop_at and _resumed_count(run) == i)
        time.sleep(random.Random(i).uniform(0.0, 0.2))  # somewhere inside the next step
        proc.send_signal(signal.SIGINT)
        rc, err = _finish(proc)
        assert rc == 0, err
        last = list(read_events(run / "events.jsonl"))[-1]
        assert last["type"] == "finished" and last["stopped_early"]
        assert latest_state(run).name == f"step-{last['step']:06d}"  # the stop saved the state
    rc, err = _finish(_start(str(config), "--output", str(run), "--resume", "latest"))
    assert rc == 0, err
    print("SIGINT after steps", stops)
    _assert_same_result(reference, run, total)


def test_nan_is_skipped_then_k_in_a_row_roll_back_and_stop(tmp_path, tiny_sd15, image_folder, monkeypatch):
    from sdlora.train.run import run_training

    monkeypatch.setenv("SDLORA_TEST_NAN_AT_STEP", "2,4-99")
    cfg = load_config(None, [f"model.path={tiny_sd15}", f"data.path={image_folder}", *EXACT, "train.max_steps=20",
                             "train.nan_max_consecutive=2", "save.state_every_n_steps=1"])
    run = tmp_path / "run"
    with pytest.raises(TrainingError) as info:
        run_training(cfg, run, progress=False)
    message = str(info.value)
    assert "not finite" in message and "stopped at step 5" in message and "state, step 3" in message
    assert "lower optim.learning_rate" in message and "'bf16' instead of 'fp16'" in message and "fp32 VAE" in message
    events = list(read_events(run / "events.jsonl"))
    warnings = [e["message"] for e in events if e["type"] == "warning" and "not finite" in e["message"]]
    assert [w.split(":")[0] for w in warnings] == ["step 2", "step 4", "step 5"]
    steps = {e["step"]: e["loss"] for e in events if e["type"] == "step"}
    assert max(steps) == 5 and steps[2] != steps[2] and steps[3] == steps[3]  # NaN only where poisoned
    # step 2 was skipped and did not count against the limit once step 3 was finite; no state
    # is saved during a NaN streak (steps 2, 4), so the last good state is step 3
    assert [p.name for p in list_states(run)] == ["step-000001", "step-000003"]
    failed = events[-1]
    assert failed["type"] == "failed" and failed["user_error"] and "Rolled back" in failed["message"]
    tensors, meta = _tensors(run / "lora.safetensors")
    assert meta["ss_steps"] == "3" and all(t.isfinite().all() for t in tensors.values())


def test_resume_config_rules(tmp_path, tiny_sd15, image_folder):
    base = [f"model.path={tiny_sd15}", f"data.path={image_folder}", *EXACT, "train.max_steps=10"]
    old = load_config(None, base)
    harmless = check_resumable_config(old, load_config(None, base + ['sample.prompts=["a cat"]',
                                                                     "save.every_n_steps=3", "save.keep_states=5"]))
    assert len(harmless) == 3 and any(h.startswith("sample.prompts") for h in harmless)
    with pytest.raises(ConfigError) as info:
        check_resumable_config(old, load_config(None, base + ["lora.rank=8", "optim.learning_rate=1e-4"]))
    assert "lora.rank: 4 -> 8" in str(info.value) and "optim.learning_rate: 0.001 -> 0.0001" in str(info.value)
    with pytest.raises(ConfigError, match="train.max_steps: 10 -> 20"):  # the cosine curve depends on it
        check_resumable_config(old, load_config(None, base + ["train.max_steps=20"]))
    constant = base + ["optim.lr_scheduler=constant"]
    assert check_resumable_config(load_config(None, constant), load_config(None, constant + ["train.max_steps=20"]))


def test_resume_cli_errors(tmp_path, tiny_sd15, image_folder, capsys):
    from sdlora.cli import main
    from sdlora.events import JsonlWriter, Warning_

    assert main(["train", "--resume"]) == 2
    assert "--resume latest needs the run folder" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    # a run whose config changed in a way that breaks resume: the changed keys are listed, nothing written
    config = _config_file(tmp_path, tiny_sd15, image_folder, "train.max_steps=4")
    run = tmp_path / "run"
    run.mkdir()
    write_config(load_config(config), run / "config.toml")
    (run / "events.jsonl").write_text('{"type": "started"}\n{"type": "st')  # torn by a kill
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert main(["train", str(config), "--resume", str(run), "--set", "lora.rank=8"]) == 2
    err = capsys.readouterr().err
    assert "break an exact resume" in err and "lora.rank: 4 -> 8" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    # appending after a torn last line starts a clean line
    writer = JsonlWriter(run / "events.jsonl")
    writer(Warning_("after the tear"))
    writer.close()
    assert [e["type"] for e in read_events(run / "events.jsonl")] == ["started", "warning"]


def test_a_fresh_run_still_refuses_a_used_folder_and_points_at_resume(tmp_path, tiny_sd15, image_folder):
    from sdlora.train.run import run_training

    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").write_text("")
    with pytest.raises(SdloraError, match="--resume"):
        run_training(load_config(None, [f"model.path={tiny_sd15}", f"data.path={image_folder}"]), run, progress=False)
