"""A training run in its folder: resolved config, events.jsonl, progress bar, failure events."""
from __future__ import annotations

import time
import traceback
from pathlib import Path

from ..config import TrainConfig, write_config
from ..errors import SdloraError
from ..events import Event, EventSink, Failed, JsonlWriter, fan_out


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.save.output_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_run_dir(run_dir: Path) -> None:
    if (run_dir / "events.jsonl").exists():
        raise SdloraError(
            f"{run_dir} already holds a training run (events.jsonl). Choose another --output folder; "
            "sdlora does not overwrite earlier runs."
        )


class ProgressBar:
    """tqdm bar driven by events, so the CLI shows exactly what the UI sees."""

    def __init__(self):
        self._bar = None

    def __call__(self, event: Event) -> None:
        from tqdm import tqdm

        if event.type == "started":
            self._bar = tqdm(total=event.total_steps, unit="step", dynamic_ncols=True)
        elif event.type == "step" and self._bar is not None:
            self._bar.update(event.step - self._bar.n)
            self._bar.set_postfix(loss=f"{event.loss:.4f}", lr=f"{event.lr:.2e}")
        elif event.type in ("finished", "failed"):
            if self._bar is not None:
                self._bar.close()
        else:
            line = describe(event)
            (self._bar.write if self._bar is not None else print)(line)


def describe(event: Event) -> str:
    """One line for the events that are not progress."""
    if event.type == "data":
        sizes = ", ".join(f"{w}x{h}: {n}" for w, h, n in event.buckets)
        return f"data: {event.num_images} images, {event.samples_per_epoch} samples/epoch, buckets {sizes}"
    if event.type == "class_images":
        return f"class images: {event.generated} generated, {event.reused} reused in {event.folder}"
    if event.type == "validation":
        return f"validation loss at step {event.step}: {event.loss:.5f}"
    if event.type == "sampled":
        return f"sampled: {event.paths[-1]}"
    if event.type == "saved":
        return f"saved: {event.path}"
    return f"{event.type}: {getattr(event, 'message', '')}"


def run_training(cfg: TrainConfig, run_dir: Path, progress: bool = True, extra_sink: EventSink | None = None) -> Path:
    """Train into `run_dir`; every outcome, failure included, ends up in events.jsonl."""
    from .trainer import Trainer

    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(cfg, run_dir / "config.toml")
    writer = JsonlWriter(run_dir / "events.jsonl")
    sinks = [writer] + ([ProgressBar()] if progress else []) + ([extra_sink] if extra_sink else [])
    emit = fan_out(*sinks)
    trainer = Trainer(cfg, run_dir, emit)
    trainer.control.install_sigint_handler()
    try:
        return trainer.run()
    except SdloraError as exc:
        emit(Failed(message=str(exc), user_error=True))
        raise
    except Exception as exc:
        emit(Failed(message=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", user_error=False))
        raise
    finally:
        writer.close()
