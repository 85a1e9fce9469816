"""The concept benchmark as a test: a LoRA trained by sdlora on 12 rendered images of a shape the
shapes-world model never saw ('sks' = a cross) must make 'a <colour> sks ...' prompts draw it.

Both are strict xfail while the recipe does not learn the cross (issue #8 open), and both are
marked slow so the default run does not spend minutes on a known failure; a strict xfail turns
red once the concept is learned, so the marks come off then. The short version trains fewer
steps and judges fewer seeds (meant for the default suite once it passes); the full one checks
the benchmark's thresholds."""
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

SHORT = ["train.max_steps=60", "sample.every_n_steps=0", "save.every_n_steps=0"]


def _before_after(tmp_path, seeds: int, overrides: list[str]):
    concept, world = concept_prompts(seeds), world_prompts(seeds)
    pipe = load_pipeline("builtin:shapes-sd15")
    before = score_pipeline(pipe, concept)
    base_world = score_pipeline(pipe, world)
    adapter, seconds = train_concept_lora(tmp_path / "run", "demo-concept", overrides)
    pipe = with_adapter(pipe, adapter)
    return before, base_world, score_pipeline(pipe, concept), score_pipeline(pipe, world), seconds


NOT_MET = ("not met yet (2026-11-22): with the demo-concept preset and variants up to rank 32 / 800 steps "
           "the concept score stays 0.0 (no crosses drawn) while world prompts degrade; see BENCHMARKS.md")


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=NOT_MET)
def test_a_short_concept_lora_raises_the_concept_score(tmp_path):
    before, base_world, after, unrelated, _ = _before_after(tmp_path, 8, SHORT)
    assert after.accuracy - before.accuracy >= 0.5, (before.judged, after.judged)
    assert unrelated.accuracy >= base_world.accuracy - 0.35  # the LoRA does not wreck the rest of the world


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=NOT_MET)
def test_concept_benchmark_meets_its_thresholds(tmp_path):
    before, base_world, after, unrelated, seconds = _before_after(tmp_path, 32, [])
    assert base_world.accuracy >= 0.8, base_world.judged
    assert after.accuracy >= 0.8 and after.accuracy - before.accuracy >= 0.5, (before.judged, after.judged)
    assert unrelated.accuracy >= 0.7, unrelated.judged
    assert seconds < 600
