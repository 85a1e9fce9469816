"""The full training state, for exact resume: <run>/state/step-NNNNNN/.

A state folder holds everything the next step depends on:
  trainer.json       step, micro-batch position (= data order and bucket cursor, see data/stream.py),
                     epoch, accelerate's accumulation counter, NaN streak, config fingerprint, versions
  lora.safetensors   the trainable LoRA tensors (fp32, exact)
  optimizer.pt       optimizer state dict (AdamW8bit's quantized state and maps included)
  scheduler.pt       LR scheduler state dict
  rng.pt             python, numpy, torch CPU (dropout), CUDA and the training generator's states
  scaler.pt          fp16 gradient scaler (only when one is used)
It is written into a temp folder, every file fsynced, then renamed into place: a folder named
step-NNNNNN is complete, and leftovers of a killed save (.step-*.tmp) are ignored and removed.

Test hook: SDLORA_TEST_SLOW_STATE_SAVE=SECONDS sleeps inside the save, after the files are
written and before the rename, so a test can kill the process during a save deterministically.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, SdloraError

STATE_FORMAT = 1
STATE_FOLDER = "state"
_STATE_NAME = re.compile(r"^step-(\d{6,})$")

# Options that may change between a run and its resume: they do not touch the training math
# (previews, file names and formats, how often things are saved, caches that are exact by design,
# memory-for-compute trades, the NaN guard's patience). Every other option must match.
HARMLESS_PREFIXES = ("sample.", "validation.")  # both run on their own RNGs, in eval mode
HARMLESS_KEYS = {
    "save.output_name", "save.every_n_steps", "save.dtype", "save.format", "save.trigger_words",
    "save.state_every_n_steps", "save.keep_states",
    "data.cache_latents", "data.cache_dir", "data.cache_text_embeddings",
    "train.gradient_checkpointing", "train.nan_max_consecutive", "model.allow_pickle",
}
# The length of the run may change when the LR schedule does not depend on it.
LENGTH_KEYS = ("train.max_steps", "train.epochs")
LENGTH_FREE_SCHEDULES = ("constant", "constant_with_warmup")


def _flat(cfg) -> dict:
    from ..config import to_dict

    data = to_dict(cfg)
    return {f"{section}.{name}": value for section, body in data.items() if isinstance(body, dict)
            for name, value in body.items()}


def _must_match(key: str, cfg) -> bool:
    if key in HARMLESS_KEYS or key.startswith(HARMLESS_PREFIXES):
        return False
    if key in LENGTH_KEYS:
        return cfg.optim.lr_scheduler not in LENGTH_FREE_SCHEDULES
    return True


def resume_fingerprint(cfg) -> str:
    """Hash of every option that must match for an exact resume."""
    keys = {k: v for k, v in _flat(cfg).items() if _must_match(k, cfg) and k not in LENGTH_KEYS}
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_changes(old, new) -> tuple[list[str], list[str]]:
    """(changes that break resume, harmless changes), each as 'key: old -> new'."""
    before, after = _flat(old), _flat(new)
    blocking, harmless = [], []
    for key in after:
        if before.get(key) != after[key]:
            line = f"{key}: {before.get(key)!r} -> {after[key]!r}"
            (blocking if _must_match(key, new) else harmless).append(line)
    return blocking, harmless


def check_resumable_config(old, new) -> list[str]:
    """Raise ConfigError listing the changes that break an exact resume; return the harmless ones."""
    blocking, harmless = config_changes(old, new)
    if blocking:
        raise ConfigError(
            "The config changed in ways that break an exact resume:\n  " + "\n  ".join(blocking)
            + "\nUndo these changes to resume, or start a new run (another --output folder). Allowed changes: "
            "sample.*, validation.*, save.output_name/every_n_steps/dtype/format/trigger_words/state_every_n_steps/"
            "keep_states, data.cache_*, model.allow_pickle, train.gradient_checkpointing, train.nan_max_consecutive, "
            "and train.max_steps/epochs "
            f"with the lr_scheduler {' or '.join(LENGTH_FREE_SCHEDULES)}."
        )
    return harmless


# --- folders ---------------------------------------------------------------------------------


def states_folder(run_dir: Path) -> Path:
    return Path(run_dir) / STATE_FOLDER


def list_states(run_dir: Path) -> list[Path]:
    """Complete state folders, oldest first (a temp folder of a killed save is never listed)."""
    folder = states_folder(run_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _STATE_NAME.match(p.name) and (p / "trainer.json").is_file()]
    return sorted(found, key=lambda p: int(_STATE_NAME.match(p.name).group(1)))


def latest_state(run_dir: Path, good_only: bool = False) -> Path | None:
    states = list_states(run_dir)
    if good_only:
        states = [s for s in states if read_info(s).get("nan_streak", 0) == 0]
    return states[-1] if states else None


def read_info(state: Path) -> dict:
    try:
        return json.loads((Path(state) / "trainer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SdloraError(f"{state} is not a readable training state ({exc}).") from None


def remove_partial_files(run_dir: Path) -> list[Path]:
    """Delete the temp files and folders that a killed save leaves (.NAME.<random>.tmp); return them."""
    removed = []
    run_dir = Path(run_dir)
    for folder in (run_dir, states_folder(run_dir), run_dir / "samples"):
        if not folder.is_dir():
            continue
        for path in folder.glob(".*.tmp"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def prune_states(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` states; an old one is renamed away first, so it is never half there."""
    for old in list_states(run_dir)[:-keep]:
        _remove_folder(old)


def _remove_folder(folder: Path) -> None:
    doomed = folder.with_name(f".{folder.name}.old.tmp")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


# --- what is saved -----------------------------------------------------------------------------


def _trained_modules(trainer) -> dict:
    from .setup import trained_modules

    unwrap = trainer.parts.accelerator.unwrap_model
    return {name: unwrap(module) for name, module in trained_modules(trainer.parts.base, trainer.cfg.lora).items()}


def lora_tensors(trainer) -> dict:
    return {f"{prefix}.{name}": p.detach().to("cpu").contiguous()
            for prefix, module in _trained_modules(trainer).items()
            for name, p in module.named_parameters() if p.requires_grad}


def capture_rng(generator) -> dict:
    import numpy as np
    import torch

    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
    }


def restore_rng(state: dict, generator) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["generator"])


@contextlib.contextmanager
def rng_untouched():
    """Run side work (adapter save + check, previews) without moving the training RNGs: what
    the run saves or renders, and when, must not change what it learns (or resume is not exact)."""
    import numpy as np
    import torch

    python, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy_state)


def _versions() -> dict:
    import importlib.metadata as md

    result = {}
    for name in ("sdlora", "torch", "diffusers", "peft", "accelerate", "bitsandbytes"):
        try:
            result[name] = md.version(name)
        except md.PackageNotFoundError:
            result[name] = None
    return result


@dataclass
class StateInfo:
    step: int
    micro_batch: int
    epoch: int
    accelerator_step: int
    nan_streak: int
    started_at: float
    config_fingerprint: str
    latent_cache: dict = field(default_factory=dict)


def save_state(trainer, step: int) -> Path:
    """Write the state after `step` into <run>/state/step-NNNNNN (atomically) and prune old ones."""
    import torch
    from safetensors.torch import save_file

    parts, cfg = trainer.parts, trainer.cfg
    target = states_folder(trainer.run_dir) / f"step-{step:06d}"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(_mkdtemp(target))
    try:
        save_file(lora_tensors(trainer), str(tmp / "lora.safetensors"))
        torch.save(parts.optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(parts.lr_scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(capture_rng(parts.generator), tmp / "rng.pt")
        scaler = getattr(parts.accelerator, "scaler", None)
        if scaler is not None:
            torch.save(scaler.state_dict(), tmp / "scaler.pt")
        source = parts.latent_source
        info = StateInfo(
            step=step,
            micro_batch=trainer.micro_batch,
            epoch=max(trainer.micro_batch - 1, 0) // parts.stream.batches_per_epoch,
            accelerator_step=int(parts.accelerator.step),
            nan_streak=trainer.nan_streak,
            started_at=trainer.started_at,
            config_fingerprint=resume_fingerprint(cfg),
            latent_cache={"mode": cfg.data.cache_latents, "vae": getattr(source, "vae_id", None)},
        )
        document = {"format": STATE_FORMAT, **info.__dict__, "versions": _versions(), "saved_at": time.time()}
        (tmp / "trainer.json").write_text(json.dumps(document, indent=1), encoding="utf-8")
        _test_hook_slow_save()
        for path in tmp.iterdir():
            _fsync(path)
        if target.exists():  # resumed from an older state: this step was saved before
            _remove_folder(target)
        os.replace(tmp, target)
        _fsync(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    prune_states(trainer.run_dir, cfg.save.keep_states)
    return target


def _mkdtemp(target: Path) -> str:
    import tempfile

    return tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # not every filesystem lets a folder be fsynced
        pass
    finally:
        os.close(fd)


def _test_hook_slow_save() -> None:
    delay = os.environ.get("SDLORA_TEST_SLOW_STATE_SAVE")
    if delay:
        time.sleep(float(delay))


def load_state(trainer, folder: Path) -> StateInfo:
    """Put the state in `folder` into the built trainer: weights, optimizer, schedule, RNGs, position."""
    import torch
    from safetensors.torch import load_file

    parts, folder = trainer.parts, Path(folder)
    document = read_info(folder)
    if document.get("format") != STATE_FORMAT:
        raise SdloraError(f"{folder} has state format {document.get('format')!r}; this sdlora reads {STATE_FORMAT}.")
    info = StateInfo(**{k: document[k] for k in StateInfo.__dataclass_fields__})
    if info.config_fingerprint != resume_fingerprint(trainer.cfg):
        raise ConfigError(
            f"{folder} was saved with a different config than this one (fingerprint {info.config_fingerprint}); "
            "resume with the run's own config.toml."
        )
    _load_lora(trainer, load_file(str(folder / "lora.safetensors")), folder)
    parts.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True))
    parts.lr_scheduler.load_state_dict(torch.load(folder / "scheduler.pt", map_location="cpu", weights_only=True))
    scaler = getattr(parts.accelerator, "scaler", None)
    if scaler is not None and (folder / "scaler.pt").is_file():
        scaler.load_state_dict(torch.load(folder / "scaler.pt", map_location="cpu", weights_only=True))
    restore_rng(torch.load(folder / "rng.pt", weights_only=True), parts.generator)
    parts.accelerator.step = info.accelerator_step
    trainer.micro_batch = info.micro_batch
    trainer.nan_streak = info.nan_streak
    trainer.started_at = info.started_at
    return info


def _load_lora(trainer, tensors: dict, folder: Path) -> None:
    import torch

    params = {f"{prefix}.{name}": p for prefix, module in _trained_modules(trainer).items()
              for name, p in module.named_parameters() if p.requires_grad}
    if params.keys() != tensors.keys():
        missing, extra = sorted(params.keys() - tensors.keys()), sorted(tensors.keys() - params.keys())
        raise SdloraError(f"{folder}/lora.safetensors does not fit this model (missing {missing[:3]}, "
                          f"unexpected {extra[:3]}).")
    with torch.no_grad():
        for key, param in params.items():
            param.copy_(tensors[key].to(param.device, param.dtype))
