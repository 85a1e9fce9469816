"""Shared fixtures: offline hub, a private SDLORA_HOME, tiny models built once per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def sdlora_home(tmp_path_factory) -> Path:
    """Built-in models and demo data go to a per-session folder, never the user's cache."""
    home = tmp_path_factory.mktemp("sdlora-home")
    os.environ["SDLORA_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def tiny_sd15(sdlora_home) -> Path:
    from sdlora.models.loading import builtin_model_path

    return builtin_model_path("tiny-sd15")


@pytest.fixture(scope="session")
def tiny_sd2v(sdlora_home) -> Path:
    from sdlora.models.loading import builtin_model_path

    return builtin_model_path("tiny-sd2-v")


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Four 64-px shape images with captions."""
    from sdlora.demo.shapes import DEMO_DATASETS, write_dataset

    return write_dataset(tmp_path / "images", DEMO_DATASETS["demo-shapes"][:4])


def run_cli(*args: str, cwd: Path | None = None):
    """Run `python -m sdlora ...` in a child process; returns the CompletedProcess."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "sdlora", *args], capture_output=True, text=True, cwd=cwd, env=os.environ.copy()
    )
