"""Concept benchmark on the built-in shapes-world model (builtin:shapes-sd15).

1. The scorer's own accuracy on held-out rendered images (clean, and after a VAE round trip).
2. Base-world accuracy: the base model's images for world prompts ("a red circle on a blue
   background"), judged for shape and colour, one image per seed.
3. Concept score before: "a <colour> sks on a <background> background" prompts judged for the
   concept shape (a cross, never in pretraining) and the colour.
4. A LoRA trained by sdlora (preset demo-concept: 12 rendered crosses captioned with 'sks'), timed;
   then the concept score and the world (unrelated-prompt) accuracy with the LoRA applied.
5. The same two scores on held-out prompts and generation seeds that no recipe was tuned on.

    PYTHONPATH=. python bench/concept.py [--seeds 32] [--guidance 7.5] [--threads 2] [--set train.max_steps=N] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
GUIDANCE = 7.5  # as sdlora.demo.concept.GUIDANCE (not imported here: --help stays fast)
HELD_OUT = (300, 400, 1000)  # concept-prompt seed, world-prompt seed, first generation seed (the tuned set: 200, 100, 0)


def scorer_accuracy(model: str, count: int) -> dict:
    """Held-out rendered scenes (seeds never used elsewhere): clean and through the model's VAE."""
    import numpy as np
    import torch

    from sdlora.demo.concept import load_pipeline
    from sdlora.demo.score import accuracy
    from sdlora.demo.shapes import concept_scenes, render, world_scenes

    scenes = world_scenes(count, 9001) + concept_scenes(count // 4, 9002)
    images = [np.asarray(render(s)) for s in scenes]
    vae = load_pipeline(model).vae
    with torch.no_grad():
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        decoded = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    round_trip = ((decoded + 1) / 2).permute(0, 2, 3, 1).numpy()
    return {"images": len(scenes), "clean": accuracy(images, scenes, background=True),
            "vae_round_trip": accuracy(round_trip, scenes, background=True)}


def run(args) -> dict:
    from sdlora.demo.concept import (
        concept_prompts,
        load_pipeline,
        score_pipeline,
        train_concept_lora,
        with_adapter,
        world_prompts,
    )

    world, concept = world_prompts(args.seeds), concept_prompts(args.seeds)
    pipe = load_pipeline(args.model)
    report = {"scorer": scorer_accuracy(args.model, args.scorer_images)}
    report["base_world"] = score_pipeline(pipe, world, guidance=args.guidance).as_dict()
    report["concept_before"] = score_pipeline(pipe, concept, guidance=args.guidance).as_dict()
    held_concept, held_world = concept_prompts(args.seeds, HELD_OUT[0]), world_prompts(args.seeds, HELD_OUT[1])
    held = report["held_out"] = {
        "base_world": score_pipeline(pipe, held_world, HELD_OUT[2], guidance=args.guidance).accuracy,
        "concept_before": score_pipeline(pipe, held_concept, HELD_OUT[2], guidance=args.guidance).accuracy}
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [f"model.path={args.model}", *args.set]
        adapter, seconds = train_concept_lora(Path(tmp) / "run", args.preset, overrides)
        pipe = with_adapter(pipe, adapter)
        report["lora_train_s"] = round(seconds, 1)
        report["concept_after"] = score_pipeline(pipe, concept, guidance=args.guidance).as_dict()
        report["unrelated_after"] = score_pipeline(pipe, world, guidance=args.guidance).as_dict()
        held["concept_after"] = score_pipeline(pipe, held_concept, HELD_OUT[2], guidance=args.guidance).accuracy
        held["unrelated_after"] = score_pipeline(pipe, held_world, HELD_OUT[2], guidance=args.guidance).accuracy
    return report


def print_report(report: dict) -> None:
    s = report["scorer"]
    print(f"scorer accuracy on {s['images']} held-out renders: clean {s['clean']:.3f}, "
          f"VAE round trip {s['vae_round_trip']:.3f}")
    for key, label in [("base_world", "base model, world prompts"), ("concept_before", "concept score before LoRA"),
                       ("concept_after", "concept score after LoRA"), ("unrelated_after", "world prompts with LoRA")]:
        r = report[key]
        print(f"{label:<30} accuracy {r['accuracy']:.3f} (colour {r['colour']:.3f}, shape {r['shape']:.3f})")
    held = report["held_out"]
    print(f"held-out prompts and seeds:    base world {held['base_world']:.3f}, concept {held['concept_before']:.3f} "
          f"-> {held['concept_after']:.3f}, world with LoRA {held['unrelated_after']:.3f}")
    print(f"LoRA training time             {report['lora_train_s']:.1f} s")


def unused_path(path: Path) -> Path:
    """`path`, or the first free `<stem>-2<suffix>`, ...: an earlier run's report is never overwritten."""
    candidate, n = path, 2
    while candidate.exists():
        candidate, n = path.with_name(f"{path.stem}-{n}{path.suffix}"), n + 1
    return candidate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:shapes-sd15")
    parser.add_argument("--preset", default="demo-concept")
    parser.add_argument("--seeds", type=int, default=32, help="images (one seed each) per prompt set")
    parser.add_argument("--guidance", type=float, default=GUIDANCE, help="classifier-free guidance of every generation")
    parser.add_argument("--scorer-images", type=int, default=400)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--set", action="append", default=[], help="config override for the LoRA run (a.b=c)")
    parser.add_argument("--json", type=Path, help=f"write the report here (default {RESULTS}/<date>-cpu-concept[-N].json, never overwritten)")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    report = run(args)
    report.update(benchmark="concept", date=str(date.today()), machine=platform.processor() or platform.machine(),
                  threads=torch.get_num_threads(), seeds=args.seeds, guidance=args.guidance, model=args.model, preset=args.preset,
                  overrides=args.set, wall_s=round(time.perf_counter() - start, 1))
    print_report(report)
    out = args.json or unused_path(RESULTS / f"{date.today()}-cpu-concept.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
