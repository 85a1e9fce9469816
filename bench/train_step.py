"""Benchmark: sdlora's training step against a bare diffusers + peft + torch reference loop.

Both loops train the same LoRA on the same model folder, data, seed and options; each runs in its
own worker process (so each has its own peak memory), and the parent drives them in lock-step,
one step at a time in alternating order (A B, B A, ...), so load from other programs on the
machine falls on both alike. Only one worker computes at any moment.

Figures: steady-state seconds per step (after warm-up steps that also fill the caches), the
ratio sdlora / reference (of medians, and the median of per-round ratios), and peak memory over
the timed steps: RSS on CPU (VmHWM after resetting it through /proc/self/clear_refs), and
torch.cuda.max_memory_allocated on CUDA.

Models: 'tiny' (builtin:tiny-sd15), 'sd15' (full-size SD1.5 shapes, random weights, built once
into <SDLORA_HOME>/models/bench-sd15-full), 'sdxl' (full-size SDXL shapes, random fp16 weights,
built once into <SDLORA_HOME>/models/bench-sdxl-full; CUDA only), 'tiny-sdxl' (builtin:tiny-sdxl,
to check the SDXL paths on CPU). The SDXL reference loop feeds its UNet made-up inputs of the
right size (no VAE or text encoders), i.e. what cached inputs give: compare it with --cache on.

    PYTHONPATH=. python bench/train_step.py --model tiny --json out.json
    PYTHONPATH=. python bench/train_step.py --model sd15 --checkpointing --optimizer adamw8bit
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from bench.measure import bf16_peak_tflops, machine_info, summary
from bench.spec import DEFAULTS, Spec, make_dataset, model_folder
from bench.workers import Worker


def make_spec(args, tmp: str) -> Spec:
    resolution, batch_size, rank, _, _ = DEFAULTS[args.model]
    resolution = args.resolution or resolution
    batch_size = args.batch_size or batch_size
    data = Path(tmp) / "data"
    make_dataset(data, batch_size, resolution)
    return Spec(
        model=args.model, folder=model_folder(args.model), data=str(data),
        resolution=resolution, batch_size=batch_size, rank=args.rank or rank, optimizer=args.optimizer,
        checkpointing=args.checkpointing, cache=args.cache == "on", precision=args.precision,
        attention=args.attention, device=args.device, seed=args.seed, count_flops=args.flops,
        quantize=args.quantize, memory_target=args.memory_target, threads=args.threads, run_dir=tmp,
    )


def drive(workers: dict, args) -> dict:
    """Warm-up, then timed steps in alternating order; peak memory over the timed steps."""
    modes = list(workers)
    _, _, _, warmup, steps = DEFAULTS[args.model]
    got = {"setup": {mode: w.receive() for mode, w in workers.items()}, "device": workers[modes[0]].ask("device")}
    for w in workers.values():
        w.ask("reset_peak")  # first, so a peak from loading is not counted as the warm-up's
    got["warm"] = {mode: [] for mode in modes}
    for _ in range(args.warmup if args.warmup is not None else warmup):
        for mode, w in workers.items():
            got["warm"][mode].append(w.ask("step"))
    for w in workers.values():
        w.ask("reset_peak")
    got["timed"] = timed = {mode: [] for mode in modes}
    for i in range(args.steps or steps):
        for mode in (modes if i % 2 == 0 else modes[::-1]):
            timed[mode].append(workers[mode].ask("step"))
        if args.verbose:
            print(f"  round {i + 1}: " + ", ".join(f"{m} {timed[m][-1]['seconds']:.3f}s" for m in modes), flush=True)
    got["peaks"] = {mode: w.ask("peak") for mode, w in workers.items()}
    got["estimate"] = workers["sdlora"].ask("estimate") if "sdlora" in workers else None
    got["flops"] = workers["reference"].ask("flops") if args.flops and "reference" in workers else None
    return got


def run_benchmark(args) -> dict:
    modes = ["sdlora", "reference"]
    if args.quantize != "none" or args.memory_target:
        modes = ["sdlora"]  # the reference loop has no quantized base or automatic settings
    modes = [m for m in modes if m in args.modes.split(",")]
    if args.model == "sdxl":
        import torch

        if not torch.cuda.is_available() and not args.allow_cpu_sdxl:
            raise SystemExit("--model sdxl is for CUDA machines (a 2.6B-parameter UNet at 1024 px); "
                             "--allow-cpu-sdxl runs it anyway.")
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="sdlora-bench-") as tmp:
        spec = make_spec(args, tmp)
        workers = {mode: Worker(mode, spec) for mode in modes}
        try:
            got = drive(workers, args)
        finally:
            for w in workers.values():
                w.close()
    info["loadavg_end"] = list(os.getloadavg())
    return build_report(args, info, spec, got)


def build_report(args, info: dict, spec: Spec, got: dict) -> dict:
    results = {}
    for mode, timed in got["timed"].items():
        seconds, cpu = [r["seconds"] for r in timed], [r["cpu_s"] for r in timed]
        results[mode] = {**summary(seconds), "step_s": seconds, "cpu_s": cpu, "median_cpu_s": statistics.median(cpu),
                         "warmup_s": [r["seconds"] for r in got["warm"][mode]],
                         "losses": [r["loss"] for r in got["warm"][mode] + timed],
                         "setup_s": got["setup"][mode]["setup_s"], "peak_memory": got["peaks"][mode],
                         "warnings": got["setup"][mode]["warnings"]}
    device = got["device"]
    report = {"benchmark": "train_step", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": info,
              "device": device, "settings": {k: v for k, v in asdict(spec).items() if k not in ("run_dir", "data")},
              "results": results}
    if len(results) == 2:
        a, b = results["sdlora"], results["reference"]
        pairs = [x / y for x, y in zip(a["step_s"], b["step_s"])]
        report["ratio"] = {"median_of_medians": a["median_s"] / b["median_s"], "mean_of_means": a["mean_s"] / b["mean_s"],
                           "min_of_mins": a["min_s"] / b["min_s"], "median_per_round": statistics.median(pairs),
                           "cpu_time_medians": a["median_cpu_s"] / b["median_cpu_s"], "per_round": pairs,
                           "max_abs_loss_diff": max(abs(x - y) for x, y in zip(a["losses"], b["losses"]))}
    if got["estimate"] is not None:
        report["memory_estimate"] = memory_comparison(got["estimate"], results["sdlora"]["peak_memory"])
    if got["flops"]:
        flops = got["flops"]
        peak = bf16_peak_tflops(device.get("name") if device["type"] == "cuda" else None, args.peak_tflops)
        report["flops"] = {"per_step": flops, "peak_tflops": peak, "mfu": {
            mode: (flops / r["median_s"] / (peak * 1e12)) if peak else None for mode, r in results.items()},
            "achieved_tflops": {mode: flops / r["median_s"] / 1e12 for mode, r in results.items()}}
    return report


def memory_comparison(estimate: dict, peak: dict) -> dict:
    """sdlora's preflight estimate against the measured peak. On CUDA the estimate's context term
    is left out: torch.cuda.max_memory_allocated does not see it."""
    total = estimate["total"]
    if estimate["device"] == "cuda":
        total -= dict(estimate["parts"]).get("CUDA context + kernels", 0)
    compared = {"estimate": estimate, "estimate_bytes": total, "measured_bytes": peak["bytes"],
                "ratio": total / peak["bytes"]}
    if "ru_maxrss_bytes" in peak:  # the process's whole life, loading included
        compared["lifetime_peak_bytes"] = peak["ru_maxrss_bytes"]
        compared["ratio_lifetime"] = total / peak["ru_maxrss_bytes"]
    return compared


def print_report(report: dict) -> None:
    s, m = report["settings"], report["machine"]
    print(f"\ntrain_step benchmark, {report['date']}: model {s['model']}, {s['resolution']}px, batch {s['batch_size']}, "
          f"rank {s['rank']}, {s['optimizer']}, checkpointing {'on' if s['checkpointing'] else 'off'}, "
          f"cache {'on' if s['cache'] else 'off'}, precision {s['precision']}, attention {s['attention']}, "
          f"threads {s['threads'] or 'default'}")
    print(f"device {report['device']['type']} ({report['device']['name'] or '?'}), {m['cpu_cores']} cores, "
          f"load {m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f}")
    print(f"{'loop':<10} {'median s':>9} {'mean s':>9} {'min s':>9} {'cpu s':>8} {'steps/s':>8} {'peak mem':>11} "
          f"{'setup s':>8}  steps")
    for mode, r in report["results"].items():
        peak = r["peak_memory"]["bytes"] / 2**30
        print(f"{mode:<10} {r['median_s']:>9.4f} {r['mean_s']:>9.4f} {r['min_s']:>9.4f} {r['median_cpu_s']:>8.3f} "
              f"{r['steps_per_s']:>8.3f} "
              f"{peak:>7.2f} GiB {r['setup_s']:>8.1f}  {len(r['step_s'])}")
    if "ratio" in report:
        ratio = report["ratio"]
        print(f"ratio sdlora/reference: {ratio['median_of_medians']:.3f} (medians), {ratio['median_per_round']:.3f} "
              f"(median of per-round ratios), {ratio['min_of_mins']:.3f} (fastest steps), "
              f"{ratio['cpu_time_medians']:.3f} (process CPU time); "
              f"max |loss diff| {ratio['max_abs_loss_diff']:.2e}")
    if "flops" in report:
        f = report["flops"]
        achieved = ", ".join(f"{k} {v:.2f}" for k, v in f["achieved_tflops"].items())
        mfu = ", ".join(f"{k} {v:.1%}" for k, v in f["mfu"].items() if v is not None) or "n/a (peak unknown)"
        print(f"FLOPs/step {f['per_step'] / 1e12:.3f} TFLOP; achieved TFLOP/s: {achieved}; MFU vs bf16 peak: {mfu}")
    print(f"peak memory: {next(iter(report['results'].values()))['peak_memory']['kind']}, per worker process")
    for mode, r in report["results"].items():
        for message in r["warnings"]:
            print(f"{mode}: {message}")
    if "memory_estimate" in report:
        m = report["memory_estimate"]
        line = (f"sdlora memory estimate vs measured peak: {m['estimate_bytes'] / 2**30:.2f} GiB vs "
                f"{m['measured_bytes'] / 2**30:.2f} GiB (timed steps), ratio {m['ratio']:.3f}")
        if "lifetime_peak_bytes" in m:
            line += (f"; vs whole-process peak {m['lifetime_peak_bytes'] / 2**30:.2f} GiB, "
                     f"ratio {m['ratio_lifetime']:.3f}")
        print(line)
        for label, size in m["estimate"]["parts"]:
            print(f"  {label:<52} {size / 2**30:7.3f} GiB")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=tuple(DEFAULTS), default="tiny")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per loop (0 = model default)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per loop (default per model)")
    parser.add_argument("--resolution", type=int, default=0, help="pixels (0 = model default)")
    parser.add_argument("--batch-size", type=int, default=0, help="0 = model default")
    parser.add_argument("--rank", type=int, default=0, help="LoRA rank (0 = model default)")
    parser.add_argument("--optimizer", choices=("adamw8bit", "adamw"), default="adamw8bit")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    parser.add_argument("--quantize", choices=("none", "int8", "nf4"), default="none",
                        help="sdlora's model.quantize (runs the sdlora loop only)")
    parser.add_argument("--memory-target", type=float, default=0.0, metavar="GB",
                        help="run sdlora with train.memory = 'auto' for this target (sdlora loop only)")
    parser.add_argument("--cache", choices=("on", "off"), default="on", help="cached latents + text embeddings")
    parser.add_argument("--precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument("--attention", choices=("sdpa", "eager"), default="sdpa")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per loop (0 = torch's default); 1 is steadier on a busy machine")
    parser.add_argument("--modes", default="sdlora,reference", help="comma list of loops to run")
    parser.add_argument("--flops", action="store_true", help="count FLOPs per step and estimate MFU")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="bf16 peak of the device for MFU")
    parser.add_argument("--allow-cpu-sdxl", action="store_true")
    parser.add_argument("--json", help="write the full report here")
    parser.add_argument("--verbose", action="store_true", help="print each timed round")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    started = time.time()
    report = run_benchmark(args)
    report["wall_s"] = time.time() - started
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    print(f"(benchmark took {report['wall_s']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
