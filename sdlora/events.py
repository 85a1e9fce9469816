"""Typed training events and their JSONL form: the only channel from the trainer to CLI and UI.

Each event is one JSON object per line with a `type` field; readers skip a torn last line.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator


@dataclass
class Event:
    type: str = field(init=False, default="")
    time: float = field(init=False, default_factory=time.time)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False)


@dataclass
class Started(Event):
    total_steps: int
    epochs: int
    steps_per_epoch: int
    num_images: int
    trainable_params: int
    total_params: int
    family: str
    device: str
    output_dir: str
    type: str = field(init=False, default="started")


@dataclass
class Step(Event):
    step: int
    total: int
    epoch: int
    loss: float
    lr: float
    it_per_s: float
    instance_loss: float | None = None  # DreamBooth prior preservation: the two parts of `loss`
    prior_loss: float | None = None
    type: str = field(init=False, default="step")


@dataclass
class Sampled(Event):
    step: int
    paths: list
    type: str = field(init=False, default="sampled")


@dataclass
class ClassImages(Event):
    folder: str
    generated: int
    reused: int
    type: str = field(init=False, default="class_images")


@dataclass
class Validation(Event):
    step: int
    loss: float
    type: str = field(init=False, default="validation")


@dataclass
class Saved(Event):
    step: int
    path: str
    type: str = field(init=False, default="saved")


@dataclass
class StateSaved(Event):
    """The full training state (for --resume) was written to `path`."""

    step: int
    path: str
    type: str = field(init=False, default="state")


@dataclass
class Resumed(Event):
    """The run goes on from a saved state: the next step is `step + 1`. Step, saved, sampled and
    state events of this run with a step above `step` that came before it were undone."""

    step: int
    epoch: int
    total_steps: int
    state: str  # the state folder; '' when none was saved yet (the run starts over)
    type: str = field(init=False, default="resumed")


@dataclass
class Warning_(Event):
    message: str
    type: str = field(init=False, default="warning")


@dataclass
class MemoryPlan(Event):
    """The peak-memory estimate before training and, with train.memory = 'auto', what was chosen."""

    summary: str  # one line: the choice (auto) or the estimate against the target
    estimate_bytes: int
    target_bytes: int  # 0 = unknown
    fits: bool
    changes: list  # ["train.gradient_checkpointing = true", ...]; empty in 'manual' mode
    breakdown: list  # the estimate's lines, as `sdlora plan` prints them
    type: str = field(init=False, default="memory")


@dataclass
class DataSummary(Event):
    """The dataset as training will see it: sent once, after lint and bucketing."""

    num_images: int
    samples_per_epoch: int  # images x repeats
    batches_per_epoch: int
    buckets: list  # [[width, height, images]]
    type: str = field(init=False, default="data")


@dataclass
class Finished(Event):
    step: int
    path: str
    stopped_early: bool
    seconds: float
    type: str = field(init=False, default="finished")


@dataclass
class Failed(Event):
    message: str
    user_error: bool
    type: str = field(init=False, default="failed")


EventSink = Callable[[Event], None]


class JsonlWriter:
    """Appends events to a file, flushing each line so a follower sees it at once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_torn_tail(self.path)
        self._handle = open(self.path, "a", encoding="utf-8")

    def __call__(self, event: Event) -> None:
        self._handle.write(event.to_json() + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def read_events(path: Path) -> Iterator[dict]:
    """Every complete event in a JSONL file, as dicts (a torn last line is skipped)."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            yield json.loads(line)


def drop_torn_tail(path: Path) -> None:
    """Cut a last line without its newline (a process killed mid-write), so that appending after
    it starts a fresh line instead of gluing two JSON objects together."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if data.endswith(b"\n"):
            return
        handle.truncate(data.rfind(b"\n") + 1)


STEP_EVENTS = ("step", "saved", "sampled", "state")


def replayed(events: list[dict]) -> list[dict]:
    """The events as if the run had never been interrupted: each `resumed` event drops the
    step-numbered events after its step that the interrupted part had already emitted."""
    result: list[dict] = []
    for event in events:
        if event["type"] == "resumed":
            result = [e for e in result if e["type"] not in STEP_EVENTS or e["step"] <= event["step"]]
        result.append(event)
    return result


def fan_out(*sinks: EventSink) -> EventSink:
    def emit(event: Event) -> None:
        for sink in sinks:
            sink(event)

    return emit
