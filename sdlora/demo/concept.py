"""Measure what a shapes-world model draws: base-world accuracy, concept score, and a concept
LoRA trained by sdlora itself. Shared by bench/concept.py and the tests.

Every prompt is a scene from sdlora.demo.shapes with a known answer; the generated image is
judged by sdlora.demo.score (shape and colour). Generation seeds are fixed, so scores repeat.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .score import judge
from .shapes import ShapeScene, concept_scenes, world_scenes

SAMPLE_STEPS = 20
GUIDANCE = 7.5  # SD's usual default; the demo-concept preset's previews use it too


def world_prompts(count: int, seed: int = 100) -> list[ShapeScene]:
    """Scenes of the pretraining world, one per generation seed."""
    return world_scenes(count, seed)


def concept_prompts(count: int, seed: int = 200) -> list[ShapeScene]:
    """'a <colour> sks on a <background> background' scenes whose answer is the concept shape (a cross)."""
    return concept_scenes(count, seed)


def load_pipeline(model: str | Path):
    from diffusers import StableDiffusionPipeline

    from ..models.loading import resolve_model_path

    pipe = StableDiffusionPipeline.from_pretrained(resolve_model_path(str(model)), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, scenes: list[ShapeScene], seed: int = 0, steps: int = SAMPLE_STEPS,
             guidance: float = GUIDANCE, chunk: int = 16) -> list:
    """One 64-px image per scene caption, image i from seed + i (float arrays in [0, 1])."""
    import torch

    images = []
    for start in range(0, len(scenes), chunk):
        part = scenes[start : start + chunk]
        generators = [torch.Generator().manual_seed(seed + start + i) for i in range(len(part))]
        with torch.no_grad():
            out = pipe([s.caption for s in part], num_inference_steps=steps, guidance_scale=guidance,
                       height=64, width=64, generator=generators, output_type="np")
        images.extend(out.images)
    return images


@dataclass
class Score:
    accuracy: float  # shape and colour right
    colour: float  # colour right
    shape: float  # shape right
    judged: list = field(default_factory=list)  # (shape, colour) per image

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "colour": self.colour, "shape": self.shape}


def score_images(images, scenes: list[ShapeScene]) -> Score:
    judgements = [judge(image) for image in images]
    n = max(len(scenes), 1)
    return Score(
        accuracy=sum(j.matches(s) for j, s in zip(judgements, scenes, strict=True)) / n,
        colour=sum(j.colour == s.colour for j, s in zip(judgements, scenes)) / n,
        shape=sum(j.shape == s.shape for j, s in zip(judgements, scenes)) / n,
        judged=[(j.shape, j.colour) for j in judgements],
    )


def score_pipeline(pipe, scenes: list[ShapeScene], seed: int = 0, **kwargs) -> Score:
    return score_images(generate(pipe, scenes, seed, **kwargs), scenes)


def train_concept_lora(run_dir: Path, preset: str = "demo-concept", overrides: list[str] | None = None
                       ) -> tuple[Path, float]:
    """Train the concept LoRA with sdlora's own trainer and preset; returns (adapter, seconds)."""
    from ..config import load_config
    from ..train.run import run_training

    cfg = load_config(None, list(overrides or []), preset=preset)
    start = time.perf_counter()
    adapter = run_training(cfg, Path(run_dir), progress=False)
    return adapter, time.perf_counter() - start


def with_adapter(pipe, adapter: Path):
    pipe.load_lora_weights(str(adapter.parent), weight_name=adapter.name)
    return pipe


__all__ = ["concept_prompts", "generate", "load_pipeline", "score_images", "score_pipeline",
           "train_concept_lora", "with_adapter", "world_prompts"]
