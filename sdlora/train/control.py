"""Requests into a running trainer: files in <run>/control/ (stop, save, sample) and SIGINT.

Checked at step boundaries only, so a request never interrupts a step or a save half-way.
"""
from __future__ import annotations

import signal
from pathlib import Path

REQUESTS = ("stop", "save", "sample")


class Control:
    def __init__(self, run_dir: Path):
        self.folder = Path(run_dir) / "control"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._interrupted = False

    def install_sigint_handler(self) -> None:
        """First Ctrl+C asks for a graceful stop; a second one stops at once."""

        def on_sigint(signum, frame):
            if self._interrupted:
                signal.default_int_handler(signum, frame)
            self._interrupted = True

        signal.signal(signal.SIGINT, on_sigint)

    def take(self, request: str) -> bool:
        """True once per request file (the file is removed); 'stop' is also true after SIGINT."""
        if request == "stop" and self._interrupted:
            return True
        path = self.folder / request
        if path.exists():
            path.unlink(missing_ok=True)
            return True
        return False


def request(run_dir: Path, what: str) -> None:
    """Ask a running trainer for 'stop', 'save' or 'sample' (used by the UI and scripts)."""
    if what not in REQUESTS:
        raise ValueError(f"request must be one of {REQUESTS}")
    folder = Path(run_dir) / "control"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / what).touch()
