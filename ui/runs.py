"""Training runs as child processes (`python -m sdlora train`), followed through events.jsonl.

The page holds no training state: everything is read back from the run folder, so a page reload
(or a new browser) re-attaches to a running child.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sdlora.events import read_events
from sdlora.train.control import request

PID_FILE = "pid"
LOG_FILE = "train.log"


def start_run(project, name: str | None = None) -> Path:
    """Start training the project's config in a new run folder; returns the folder."""
    cfg = project.load_config()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = project.runs / f"{name or cfg.save.output_name}-{stamp}"
    n = 1
    while run_dir.exists():
        run_dir = project.runs / f"{name or cfg.save.output_name}-{stamp}-{n}"
        n += 1
    run_dir.mkdir(parents=True)
    log = open(run_dir / LOG_FILE, "w", encoding="utf-8")
    command = [sys.executable, "-m", "sdlora", "train", str(project.config_path), "--output", str(run_dir), "--quiet"]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=project.root,
                               start_new_session=True)  # Ctrl+C in the UI's terminal does not kill the run
    log.close()
    (run_dir / PID_FILE).write_text(str(process.pid))
    _CHILDREN[run_dir] = process
    return run_dir


_CHILDREN: dict[Path, subprocess.Popen] = {}  # reaped here so finished children leave no zombies


def is_alive(run_dir: Path) -> bool:
    process = _CHILDREN.get(run_dir)
    if process is not None:
        return process.poll() is None
    try:
        pid = int((run_dir / PID_FILE).read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return False
    return True


def latest_run(project) -> Path | None:
    runs = sorted((p for p in project.runs.glob("*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return runs[-1] if runs else None


def send(run_dir: Path, what: str) -> None:
    """'stop', 'save' or 'sample' at the child's next step boundary."""
    request(run_dir, what)


@dataclass
class RunView:
    """What the page shows about one run, read from its folder."""

    run_dir: Path
    state: str = "starting"  # starting, running, finished, stopped, failed, crashed
    step: int = 0
    total: int = 0
    it_per_s: float = 0.0
    losses: list = field(default_factory=list)  # (step, loss)
    validation: list = field(default_factory=list)  # (step, validation loss)
    samples: list = field(default_factory=list)  # newest round first
    saved: list = field(default_factory=list)
    messages: list = field(default_factory=list)
    error: str = ""

    @property
    def eta_seconds(self) -> float:
        return (self.total - self.step) / self.it_per_s if self.it_per_s > 0 else 0.0


def read_run(run_dir: Path) -> RunView:
    view = RunView(Path(run_dir))
    events_path = view.run_dir / "events.jsonl"
    events = list(read_events(events_path)) if events_path.is_file() else []
    for event in events:
        _apply(view, event)
    if view.state in ("starting", "running") and not is_alive(view.run_dir):
        view.state = "crashed"
        view.error = "The training process ended without a final event. Last log lines:\n" + log_tail(view.run_dir)
    return view


def _apply(view: RunView, event: dict) -> None:
    kind = event["type"]
    if kind == "started":
        view.state, view.total = "running", event["total_steps"]
    elif kind == "step":
        view.step, view.total, view.it_per_s = event["step"], event["total"], event["it_per_s"]
        view.losses.append((event["step"], event["loss"]))
    elif kind == "validation":
        view.validation.append((event["step"], event["loss"]))
    elif kind == "class_images":
        view.messages.append(f"class images: {event['generated']} generated, {event['reused']} reused")
    elif kind == "resumed":  # the steps after the resumed state are done again: drop their losses
        view.state, view.step, view.total = "running", event["step"], event["total_steps"]
        view.losses = [point for point in view.losses if point[0] <= event["step"]]
    elif kind == "sampled":
        view.samples = [p for p in event["paths"] if not p.endswith("-grid.png")] + view.samples
    elif kind == "saved":
        view.saved.append(event["path"])
    elif kind == "memory":
        view.messages.append(event["summary"])
    elif kind == "warning":
        view.messages.append("warning: " + event["message"])
    elif kind == "finished":
        view.state = "stopped" if event["stopped_early"] else "finished"
    elif kind == "failed":
        view.state, view.error = "failed", event["message"]


def log_tail(run_dir: Path, lines: int = 20) -> str:
    path = Path(run_dir) / LOG_FILE
    if not path.is_file():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
