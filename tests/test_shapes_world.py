"""The shapes world: renderer ground truth, the analytic scorer, the packaged pretrained model."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from sdlora.demo.score import accuracy, judge
from sdlora.demo.shapes import (
    CONCEPT_TOKEN,
    DEMO_DATASETS,
    PALETTE,
    ShapeScene,
    builtin_dataset_path,
    concept_scenes,
    render,
    world_scenes,
)


def test_renderer_is_deterministic_and_its_captions_say_what_is_drawn():
    first, again = world_scenes(20, 5), world_scenes(20, 5)
    assert first == again and first != world_scenes(20, 6)
    assert all(np.array_equal(np.asarray(render(a)), np.asarray(render(b))) for a, b in zip(first, again))
    scene = ShapeScene("square", "red", "blue", 0.5, (0.5, 0.5))
    pixels = np.asarray(render(scene))
    assert scene.caption == "a red square on a blue background"
    assert tuple(pixels[32, 32]) == PALETTE["red"] and tuple(pixels[2, 2]) == PALETTE["blue"]
    assert all(s.colour != s.background for s in world_scenes(200, 1))


def test_concept_dataset_binds_the_new_shape_to_the_token(sdlora_home):
    scenes = DEMO_DATASETS["demo-concept"]
    assert len(scenes) == 12 and {s.shape for s in scenes} == {"cross"}
    # curated: every colour is the shape twice and the background twice, never both at once
    assert Counter(s.colour for s in scenes) == Counter(s.background for s in scenes) == Counter(
        {c: 2 for c in PALETTE})
    assert all(s.colour != s.background for s in scenes) and len({(s.colour, s.background) for s in scenes}) == 12
    folder = builtin_dataset_path("demo-concept")
    captions = sorted(p.read_text().strip() for p in folder.glob("*.txt"))
    assert len(captions) == 12 and all(f" {CONCEPT_TOKEN} on a " in c for c in captions)
    assert "cross" not in " ".join(captions)
    assert "cross" not in " ".join(s.caption for s in world_scenes(500, 3))  # the base world never shows it


def test_world_regularization_set_is_the_base_world(sdlora_home):
    folder = builtin_dataset_path("demo-world")
    captions = [p.read_text().strip() for p in sorted(folder.glob("*.txt"))]
    assert len(captions) == 48 == len(list(folder.glob("*.png")))
    assert {c.split()[2] for c in captions} == {"circle", "square", "triangle"}
    assert not any(CONCEPT_TOKEN in c for c in captions)


def test_scorer_is_right_on_held_out_renders():
    scenes = world_scenes(300, 4242) + concept_scenes(60, 4243)
    images = [render(s) for s in scenes]
    assert accuracy(images, scenes, background=True) >= 0.95
    assert judge(np.full((64, 64, 3), 0.5)).shape == "none"  # nothing drawn: no shape, not a guess


def test_scorer_rejects_wrong_answers():
    circle = ShapeScene("circle", "green", "white", 0.6, (0.5, 0.5))
    judged = judge(render(circle))
    assert judged.matches(circle)
    assert not judged.matches(ShapeScene("triangle", "green", "white"))
    assert not judged.matches(ShapeScene("circle", "red", "white"))
    cross = ShapeScene("cross", "red", "white", 0.5, (0.5, 0.5), CONCEPT_TOKEN)
    assert judge(render(cross)).matches(cross) and cross.caption == "a red sks on a white background"


def test_packaged_model_loads_as_a_plain_sd15_pipeline():
    import torch
    from diffusers import StableDiffusionPipeline

    from sdlora.lora.inject import TEXT_ENCODER_TARGETS, UNET_TARGETS
    from sdlora.models.family import detect_family
    from sdlora.models.loading import builtin_model_path

    folder = builtin_model_path("shapes-sd15")
    size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20
    assert size_mb <= 20, size_mb
    assert detect_family(folder) == "sd15"
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    assert {pipe.unet.dtype, pipe.vae.dtype, pipe.text_encoder.dtype} == {torch.float32}
    unet_names = {name.rsplit(".", 1)[-1] for name, _ in pipe.unet.named_modules()}
    assert {"to_q", "to_k", "to_v"} <= unet_names and any(n.endswith("to_out.0") for n, _ in pipe.unet.named_modules())
    assert set(UNET_TARGETS["attn"]) - {"to_out.0"} <= unet_names
    assert set(TEXT_ENCODER_TARGETS) <= {n.rsplit(".", 1)[-1] for n, _ in pipe.text_encoder.named_modules()}
    info = json.loads((folder / "pretrain.json").read_text())
    assert info["seed"] == 0 and info["seconds"] > 0


def test_scorer_survives_the_models_vae():
    import torch

    from sdlora.demo.concept import load_pipeline

    scenes = world_scenes(64, 777) + concept_scenes(32, 778)
    x = torch.from_numpy(np.stack([np.asarray(render(s)) for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    vae = load_pipeline("builtin:shapes-sd15").vae
    with torch.no_grad():
        decoded = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    assert accuracy(((decoded + 1) / 2).permute(0, 2, 3, 1).numpy(), scenes) >= 0.95


@pytest.mark.parametrize("name", ["shapes-sd15"])
def test_missing_packaged_model_says_how_to_fix(monkeypatch, tmp_path, name):
    from sdlora.errors import ModelError
    from sdlora.models import loading

    monkeypatch.setitem(loading.PACKAGED_MODELS, name, tmp_path / "gone")
    with pytest.raises(ModelError, match="Reinstall sdlora"):
        loading.builtin_model_path(name)


def test_ui_demo_project_is_the_concept_demo_and_keeps_user_edits(tmp_path):
    from ui.project import demo_project

    project = demo_project(tmp_path)
    cfg = project.load_config()
    assert cfg.model.path == "builtin:shapes-sd15" and cfg.data.path == str(project.images)
    images = project.image_files()
    assert len(images) == 12 and all(f" {CONCEPT_TOKEN} on a " in project.read_caption(p.name) for p in images)
    project.write_caption(images[0].name, "my own caption")
    cfg.train.max_steps = 7
    project.save_config(cfg)
    again = demo_project(tmp_path)  # reopening never rewrites what the user changed
    assert again.read_caption(images[0].name) == "my own caption" and again.load_config().train.max_steps == 7


def test_builtin_dataset_cache_follows_its_definition(sdlora_home, monkeypatch):
    from sdlora.demo import shapes

    folder = builtin_dataset_path("demo-concept")
    assert folder.name == "demo-concept" and len(list(folder.glob("*.png"))) == 12
    changed = [ShapeScene("circle", "red", "white", 0.5, (0.5, 0.5), CONCEPT_TOKEN)] * 3
    monkeypatch.setitem(shapes.DEMO_DATASETS, "demo-concept", changed)
    other = builtin_dataset_path("demo-concept")  # a changed definition never reuses the old cache
    assert other != folder and len(list(other.glob("*.png"))) == 3
    assert len(list(folder.glob("*.png"))) == 12  # and the old one is left alone
