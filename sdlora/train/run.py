"""A training run in its folder: resolved config, events.jsonl, progress bar, failure events."""
from __future__ import annotations

import errno
import time
import traceback
from pathlib import Path

from ..config import TrainConfig, load_config, write_config
from ..errors import SdloraError
from ..events import Event, EventSink, Failed, JsonlWriter, Warning_, fan_out


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.save.output_name}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_run_dir(run_dir: Path) -> None:
    if (run_dir / "events.jsonl").exists():
        raise SdloraError(
            f"{run_dir} already holds a training run (events.jsonl). Choose another --output folder, "
            f"or continue it with `sdlora train --resume {run_dir}`; sdlora does not overwrite earlier runs."
        )


def resolve_resume(resume: str | Path, output: Path | None) -> tuple[Path, Path | None]:
    """`--resume latest|PATH` (+ --output) -> (run folder, state folder or None for the latest)."""
    if str(resume) == "latest":
        if output is None:
            raise SdloraError("--resume latest needs the run folder: add --output RUN_FOLDER, or pass it: "
                              "--resume RUN_FOLDER.")
        run_dir, state = Path(output), None
    else:
        path = Path(resume)
        if (path / "trainer.json").is_file():
            run_dir, state = path.parent.parent, path
        elif (path / "config.toml").is_file():
            run_dir, state = path, None
        else:
            raise SdloraError(f"--resume {resume}: not a run folder (with config.toml) nor a state folder "
                              "(<run>/state/step-NNNNNN with trainer.json).")
        if output is not None and Path(output).resolve() != run_dir.resolve():
            raise SdloraError(f"--output {output} and --resume {resume} name different run folders.")
    if not (run_dir / "config.toml").is_file():
        raise SdloraError(f"{run_dir} holds no run to resume (no config.toml).")
    return run_dir, state


def prepare_resume(cfg: TrainConfig, run_dir: Path, state: Path | None) -> tuple[Path | None, list[str]]:
    """Check the config against the run's, clear partial leftovers; (state to load, harmless changes)."""
    from .state import check_resumable_config, latest_state, remove_partial_files

    harmless = check_resumable_config(load_config(run_dir / "config.toml"), cfg)
    remove_partial_files(run_dir)
    state = state if state is not None else latest_state(run_dir)
    if state is not None and Path(state).resolve().parent != (run_dir / "state").resolve():
        raise SdloraError(f"{state} is not a state of the run in {run_dir}.")
    return state, harmless


def disk_error(exc: OSError, run_dir: Path) -> SdloraError | None:
    """A clear message for the OS errors a user fixes (full disk, read-only or forbidden folder)."""
    reasons = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exhausted",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "the operation is not permitted",
    }
    if exc.errno not in reasons:
        return None
    where = exc.filename or run_dir
    return SdloraError(
        f"Cannot write {where}: {reasons[exc.errno]}. Free some space or choose a writable --output folder. "
        "Files saved earlier are intact (sdlora writes to a temp name and renames), and the run can go on "
        f"from its last saved state with `sdlora train --resume {run_dir}`."
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
        elif event.type == "resumed" and self._bar is not None:
            self._bar.n = event.step
            self._bar.refresh()
            self._bar.write(f"resumed from step {event.step}")
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
    if event.type == "state":
        return f"training state saved: {event.path}"
    if event.type == "resumed":
        return f"resumed from step {event.step}"
    if event.type == "memory":
        return event.summary
    return f"{event.type}: {getattr(event, 'message', '')}"


def run_training(cfg: TrainConfig, run_dir: Path, progress: bool = True, extra_sink: EventSink | None = None,
                 resume: bool = False, resume_state: Path | None = None) -> Path:
    """Train into `run_dir`; every outcome, failure included, ends up in events.jsonl.
    With `resume`, go on in the same folder from `resume_state` (default: its latest state)."""
    from .memory_auto import resolve_memory
    from .trainer import Trainer

    run_dir = Path(run_dir)
    harmless: list[str] = []
    cfg, memory_event = resolve_memory(cfg)  # train.memory = 'auto' changes the config the run uses
    if resume:
        resume_state, harmless = prepare_resume(cfg, run_dir, resume_state)
    else:
        check_run_dir(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_config(cfg, run_dir / "config.toml")
        writer = JsonlWriter(run_dir / "events.jsonl")
    except OSError as exc:
        raise (disk_error(exc, run_dir) or exc) from exc
    sinks = [writer] + ([ProgressBar()] if progress else []) + ([extra_sink] if extra_sink else [])
    emit = fan_out(*sinks)
    if memory_event is not None:
        emit(memory_event)
    for change in harmless:
        emit(Warning_(f"resumed with a changed option (does not affect the training math): {change}"))
    trainer = Trainer(cfg, run_dir, emit, resume=resume, resume_state=resume_state)
    trainer.control.install_sigint_handler()
    try:
        return trainer.run()
    except SdloraError as exc:
        emit(Failed(message=str(exc), user_error=True))
        raise
    except OSError as exc:
        error = disk_error(exc, run_dir)
        if error is None:
            emit(Failed(message=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", user_error=False))
            raise
        emit(Failed(message=str(error), user_error=True))
        raise error from exc
    except Exception as exc:
        emit(Failed(message=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}", user_error=False))
        raise
    finally:
        writer.close()
