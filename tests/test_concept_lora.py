"""The concept benchmark as a test: a LoRA trained by sdlora on 12 rendered images of a shape the
shapes-world model never saw ('sks' = a cross) must make 'a <colour> sks ...' prompts draw it,
judged by the analytic scorer on fixed seeds, while world prompts keep their shapes.

The short version (default suite, a few minutes on CPU) trains the demo-concept preset for 300
of its 500 steps without previews and checks a rise of at least 0.5; the full one (slow) checks
the benchmark's thresholds (bench/concept.py prints the same figures)."""
from __future__ import annotations

import pytest

from sdlora.demo.concept import (
    concept_prompts,
    load_pipeline,
    score_pipeline,
    train_concept_lora,
    with_adapter,
    world_prompts,
)

SHORT = ["train.max_steps=300", "sample.every_n_steps=0", "save.every_n_steps=0"]


def _before_after(tmp_path, seeds: int, overrides: list[str]):
    concept, world = concept_prompts(seeds), world_prompts(seeds)
    pipe = load_pipeline("builtin:shapes-sd15")
    before = score_pipeline(pipe, concept)
    base_world = score_pipeline(pipe, world)
    adapter, seconds = train_concept_lora(tmp_path / "run", "demo-concept", overrides)
    pipe = with_adapter(pipe, adapter)
    return before, base_world, score_pipeline(pipe, concept), score_pipeline(pipe, world), seconds


def test_a_short_concept_lora_raises_the_concept_score(tmp_path):
    before, base_world, after, unrelated, _ = _before_after(tmp_path, 16, SHORT)
    assert before.shape == 0.0 and before.colour >= 0.8  # 'sks' draws some known shape, in the right colour
    assert after.accuracy - before.accuracy >= 0.5, (before.judged, after.judged)
    assert unrelated.accuracy >= base_world.accuracy - 0.3, unrelated.judged  # the rest of the world stays


@pytest.mark.slow
def test_concept_benchmark_meets_its_thresholds(tmp_path):
    before, base_world, after, unrelated, seconds = _before_after(tmp_path, 32, [])
    assert base_world.accuracy >= 0.8, base_world.judged
    assert after.accuracy >= 0.8 and after.accuracy - before.accuracy >= 0.5, (before.judged, after.judged)
    assert unrelated.accuracy >= 0.7, unrelated.judged
    assert seconds < 600
