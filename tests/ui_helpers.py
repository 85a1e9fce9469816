"""Start the app in-process on a fresh workspace with a fast tiny-model project."""
from __future__ import annotations

import time
from pathlib import Path

FAST_SETTINGS = ["train.max_steps=8", "save.every_n_steps=4", "sample.every_n_steps=4", "sample.steps=2",
                 "train.batch_size=2", "optim.optimizer=adamw"]


def make_start_project(workspace: Path) -> Path:
    from sdlora.config import load_config
    from ui.project import open_project

    project = open_project(workspace / "start", preset="demo-tiny")
    project.save_config(load_config(preset="demo-tiny", overrides=FAST_SETTINGS))
    return project.root


def wait_for(predicate, timeout: float = 900, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")
