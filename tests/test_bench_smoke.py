"""bench/train_step.py runs end to end on the tiny model and writes its JSON report (no timing asserted)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow  # two worker processes each import torch + diffusers + peft: ~30 s idle, minutes under load
def test_train_step_bench_writes_report(tmp_path, sdlora_home):
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", SDLORA_HOME=str(sdlora_home))
    command = [sys.executable, str(REPO / "bench" / "train_step.py"), "--model", "tiny", "--steps", "2",
               "--warmup", "1", "--threads", "1", "--json", str(out)]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert {"machine", "device", "settings", "results", "ratio"} <= set(report)
    assert set(report["results"]) == {"sdlora", "reference"}
    for result in report["results"].values():
        assert len(result["step_s"]) == 2
        assert {"median_s", "mean_s", "steps_per_s", "peak_memory", "losses"} <= set(result)
        assert result["peak_memory"]["bytes"] > 0
    # same model, data, seed and LoRA init: the first step's loss agrees (later batches may differ in order)
    assert abs(report["results"]["sdlora"]["losses"][0] - report["results"]["reference"]["losses"][0]) < 0.05
    assert report["ratio"]["median_of_medians"] > 0
