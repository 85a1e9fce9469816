"""Benchmark: a training run started by the UI (ui.runs.start_run) vs the same run from the CLI.

Both start the same `python -m sdlora train` child; this measures whether the UI's way of
starting it adds time. One tiny demo project (built-in tiny model, demo shapes, previews off),
runs alternate UI, CLI, CLI, UI, ... so load on the machine falls on both alike. Per run: wall
time from launch to the `finished` event in events.jsonl, and the trainer's own seconds (from
`started` to `finished`).

    PYTHONPATH=. python bench/ui_overhead.py [--rounds 2] [--steps 20] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def wait_finished(run_dir: Path, launched: float, timeout: float = 600.0) -> dict:
    from sdlora.events import read_events

    events_file = run_dir / "events.jsonl"
    while time.perf_counter() - launched < timeout:
        if events_file.is_file():
            events = list(read_events(events_file))
            done = [e for e in events if e["type"] in ("finished", "failed")]
            if done:
                wall = time.perf_counter() - launched
                started = next((e for e in events if e["type"] == "started"), None)
                if started is None:
                    raise RuntimeError(f"run in {run_dir} failed before starting: {done[0]['message'][:500]}")
                # A run that fails after its steps (e.g. in the final save) still timed the same work both ways.
                return {"wall_s": wall, "train_s": done[0]["time"] - started["time"], "outcome": done[0]["type"],
                        "steps": sum(1 for e in events if e["type"] == "step"),
                        "message": done[0].get("message", "")[:300]}
        time.sleep(0.02)
    raise TimeoutError(f"no finished event in {run_dir} after {timeout} s")


def run_ui(project) -> dict:
    from ui.runs import start_run

    launched = time.perf_counter()
    run_dir = start_run(project, name="ui")
    return wait_finished(run_dir, launched)


def run_cli(project, index: int) -> dict:
    run_dir = project.runs / f"cli-{index}"
    launched = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "sdlora", "train", str(project.config_path), "--output",
                                str(run_dir), "--quiet"], cwd=project.root,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = wait_finished(run_dir, launched)
    process.wait()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="runs per way of starting")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from ui.project import demo_project

    with tempfile.TemporaryDirectory(prefix="sdlora-ui-bench-") as tmp:
        os.environ.setdefault("SDLORA_HOME", str(Path(tmp) / "home"))
        project = demo_project(Path(tmp) / "home")
        cfg = project.load_config()
        cfg.train.max_steps = args.steps
        cfg.sample.prompts = []
        cfg.save.every_n_steps = 0
        project.save_config(cfg)
        from sdlora.models.loading import builtin_model_path

        builtin_model_path("tiny-sd15")  # built before timing
        load_start = os.getloadavg()[0]
        results: dict = {"ui": [], "cli": []}
        for i in range(args.rounds):
            for way in (("ui", "cli") if i % 2 == 0 else ("cli", "ui")):
                results[way].append(run_ui(project) if way == "ui" else run_cli(project, i))
                last = results[way][-1]
                print(f"  {way}: {last['wall_s']:.2f} s wall, {last['train_s']:.2f} s training, {last['steps']} steps, "
                      f"{last['outcome']}", flush=True)
    report = {"benchmark": "ui_overhead", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": args.steps,
              "loadavg": [load_start, os.getloadavg()[0]], "runs": results}
    for way in results.values():
        for run in way:
            run["outside_training_s"] = run["wall_s"] - run["train_s"]  # process start, imports, model load, exit
    for key in ("wall_s", "train_s", "outside_training_s"):
        ui, cli = (statistics.median(r[key] for r in results[w]) for w in ("ui", "cli"))
        report[f"ratio_{key}"] = ui / cli
        print(f"{key}: UI median {ui:.2f} s, CLI median {cli:.2f} s, UI/CLI {ui / cli:.3f}")
    print(f"load {load_start:.2f} -> {os.getloadavg()[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
