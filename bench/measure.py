"""Measuring: peak memory (RSS / CUDA), device sync, machine facts, step-time summaries, and
sdlora's own peak-memory estimate for the settings (to print beside the measured peak)."""
from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path

# Dense bf16 tensor-core peaks (TFLOP/s, without sparsity) for the MFU estimate; --peak-tflops overrides.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
                    "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
                    "RTX 4090": 165.0, "RTX 3090": 71.0}


def reset_peak_memory(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux: '5' resets the peak resident set size (VmHWM) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory(device) -> dict:
    import resource

    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        return {"kind": "cuda_max_memory_allocated", "bytes": torch.cuda.max_memory_allocated(),
                "reserved_bytes": torch.cuda.max_memory_reserved()}
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        status = Path("/proc/self/status").read_text()
        hwm = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
        return {"kind": "rss_peak_timed_steps", "bytes": hwm, "ru_maxrss_bytes": lifetime}
    except (OSError, StopIteration):
        return {"kind": "rss_peak_lifetime", "bytes": lifetime, "ru_maxrss_bytes": lifetime}


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "?"


def summary(seconds: list[float]) -> dict:
    return {"mean_s": statistics.fmean(seconds), "median_s": statistics.median(seconds), "min_s": min(seconds),
            "max_s": max(seconds), "steps_per_s": 1.0 / statistics.median(seconds)}


def machine_info() -> dict:
    import torch

    memory = 0
    try:
        memory = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal:"))
    except (OSError, StopIteration):
        pass
    return {"cpu_cores": os.cpu_count(), "memory_bytes": memory, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "loadavg_start": list(os.getloadavg())}


def bf16_peak_tflops(device_name: str | None, override: float) -> float | None:
    if override:
        return override
    if not device_name:
        return None
    for key, value in BF16_PEAK_TFLOPS.items():  # most specific names first
        if key in device_name:
            return value
    return None


def estimate_for(cfg, device_type: str) -> dict:
    """sdlora's peak-memory estimate for `cfg` at its resolution (square images), as a dict."""
    from sdlora.train.memory import estimate, model_facts

    side = cfg.data.resolution
    return estimate(model_facts(cfg.model), cfg, (side, side), device_type).to_dict()
