"""The two loops as worker processes: each in its own process (own peak memory), driven by the parent."""
from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from bench.measure import cpu_name, estimate_for, peak_memory, reset_peak_memory, sync
from bench.reference_loop import ReferenceLoop, set_attention
from bench.spec import Spec


class SdloraLoop:
    """sdlora's real code path: a Trainer built from a config; one call = Trainer.optimizer_step()."""

    def __init__(self, spec: Spec):
        from sdlora.config import from_dict
        from sdlora.train.setup import build_run
        from sdlora.train.trainer import Trainer

        cfg = from_dict({
            "model": {"path": spec.folder, "quantize": spec.quantize},
            "data": {"path": spec.data, "resolution": spec.resolution,
                     "cache_latents": "memory" if spec.cache else "off", "cache_text_embeddings": spec.cache},
            "lora": {"rank": spec.rank, "alpha": float(spec.rank)},
            "optim": {"optimizer": spec.optimizer, "learning_rate": 1e-4},
            "train": {"max_steps": 100_000, "batch_size": spec.batch_size, "seed": spec.seed,
                      "gradient_checkpointing": spec.checkpointing, "mixed_precision": spec.precision,
                      "device": spec.device},
        })
        self.warnings: list[str] = []
        if spec.memory_target > 0:  # what `sdlora train` does before a run with train.memory = 'auto'
            from sdlora.config.io import deep_merge, to_dict
            from sdlora.train.memory_auto import resolve_memory

            auto = {"train": {"memory": "auto", "memory_target_gb": spec.memory_target}}
            cfg, event = resolve_memory(from_dict(deep_merge(to_dict(cfg), auto)))
            self.warnings.append(event.summary)
        self.cfg = cfg
        self.trainer = Trainer(cfg, Path(spec.run_dir) / "sdlora", emit=lambda event: None)
        self.trainer.parts = build_run(cfg, warn=self.warnings.append)
        self.device = self.trainer.parts.accelerator.device
        unet = self.trainer.parts.accelerator.unwrap_model(self.trainer.parts.base.unet)
        set_attention(unet, spec.attention)

    def step(self) -> float:
        return self.trainer.optimizer_step()["loss"]

    def estimate(self) -> dict:
        """sdlora's preflight estimate for this very config (what `sdlora plan` prints)."""
        return estimate_for(self.cfg, self.device.type)


def worker_main(conn, mode: str, spec_dict: dict) -> None:
    """One loop in its own process; answers the parent's commands until 'quit'."""
    import logging

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        started = time.perf_counter()
        spec = Spec(**spec_dict)
        if spec.threads:
            import torch

            torch.set_num_threads(spec.threads)
        loop = SdloraLoop(spec) if mode == "sdlora" else ReferenceLoop(spec)
        conn.send(("ok", {"setup_s": time.perf_counter() - started,
                          "warnings": getattr(loop, "warnings", [])}))
        while True:
            command, arg = conn.recv()
            if command == "quit":
                break
            if command == "step":
                sync(loop.device)
                tick, cpu_tick = time.perf_counter(), time.process_time()
                loss = loop.step()
                sync(loop.device)
                conn.send(("ok", {"seconds": time.perf_counter() - tick, "cpu_s": time.process_time() - cpu_tick,
                                  "loss": loss}))
            elif command == "reset_peak":
                reset_peak_memory(loop.device)
                conn.send(("ok", None))
            elif command == "peak":
                conn.send(("ok", peak_memory(loop.device)))
            elif command == "estimate":
                conn.send(("ok", loop.estimate() if mode == "sdlora" else None))
            elif command == "flops":
                conn.send(("ok", loop.count_step_flops()))
            elif command == "device":
                import torch

                name = torch.cuda.get_device_name(loop.device) if loop.device.type == "cuda" else cpu_name()
                conn.send(("ok", {"type": loop.device.type, "name": name}))
    except Exception:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class Worker:
    def __init__(self, mode: str, spec: Spec):
        context = multiprocessing.get_context("spawn")
        self.mode = mode
        self.conn, child = context.Pipe()
        self.process = context.Process(target=worker_main, args=(child, mode, asdict(spec)), daemon=True)
        self.process.start()
        child.close()

    def receive(self):
        status, value = self.conn.recv()
        if status == "error":
            raise RuntimeError(f"{self.mode} worker failed:\n{value}")
        return value

    def ask(self, command: str, arg=None):
        self.conn.send((command, arg))
        return self.receive()

    def close(self) -> None:
        try:
            self.conn.send(("quit", None))
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
