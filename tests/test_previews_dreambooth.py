"""Previews, DreamBooth prior preservation and validation loss on the tiny model."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from sdlora.config import load_config
from sdlora.errors import ConfigError
from sdlora.events import read_events
from sdlora.train.run import run_training

FAST = ["data.resolution=64", "optim.optimizer=adamw", "optim.learning_rate=1e-3", "lora.rank=4", "lora.alpha=4",
        "train.batch_size=2", "sample.steps=2"]


def _config(tiny_sd15, image_folder, *extra):
    return load_config(None, [f"model.path={tiny_sd15}", f"data.path={image_folder}", *FAST, *extra])


def _events(run_dir, kind):
    return [e for e in read_events(run_dir / "events.jsonl") if e["type"] == kind]


def test_prompt_lines_take_kohya_style_options():
    from sdlora.sample import parse_prompts

    cfg = load_config(None, ["sample.prompts=['a cat --n blurry, dark --s 7 --l 4.5 --d 99 --w 128 --h 64 "
                             "--sampler euler_a', 'a dog']", "sample.seed=10", "sample.size=96"])
    first, second = parse_prompts(cfg.sample, 512)
    assert (first.prompt, first.negative_prompt, first.steps, first.guidance_scale) == ("a cat", "blurry, dark", 7, 4.5)
    assert (first.seed, first.width, first.height, first.sampler) == (99, 128, 64, "euler_a")
    assert (second.prompt, second.seed, second.width, second.steps, second.sampler) == ("a dog", 11, 96, 20, "default")
    for bad, message in [("x --q 3", "unknown option '--q'"), ("x --s many", "not a number"),
                         ("x --w 100", "multiple of 8"), ("x --sampler fast", "sampler 'fast' unknown")]:
        with pytest.raises(ConfigError, match=message):
            parse_prompts(load_config(None, [f"sample.prompts=['{bad}']"]).sample, 64)


def test_previews_do_not_change_the_adapter(tmp_path, tiny_sd15, image_folder):
    base = ["train.max_steps=4", "lora.dropout=0.1", "data.random_flip=true"]
    quiet = run_training(_config(tiny_sd15, image_folder, *base), tmp_path / "quiet", progress=False)
    previews = _config(tiny_sd15, image_folder, *base, "sample.prompts=['a red circle --sampler euler_a', 'x']",
                       "sample.every_n_steps=2", "sample.every_n_epochs=1")
    sampled = run_training(previews, tmp_path / "previews", progress=False)
    assert [e["step"] for e in _events(tmp_path / "previews", "sampled")] == [2, 4]
    a, b = load_file(quiet), load_file(sampled)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sample_command_renders_a_strength_sweep(tmp_path, tiny_sd15, image_folder):
    import numpy as np
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    from sdlora.cli import main

    adapter = run_training(_config(tiny_sd15, image_folder, "train.max_steps=3", "optim.learning_rate=1e-2"),
                           tmp_path / "run", progress=False)
    out = tmp_path / "sweep.png"
    assert main(["sample", str(adapter), "--prompt", "a red circle", "--prompt", "a square --d 7", "--strengths",
                 "0,1", "--steps", "2", "--size", "64", "-o", str(out)]) == 0  # base model from the metadata
    grid = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert grid.shape == (128, 128, 3)
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15, safety_checker=None, requires_safety_checker=False)
    plain = pipe("a red circle", num_inference_steps=2, guidance_scale=7.5, height=64, width=64,
                 generator=torch.Generator().manual_seed(1234)).images[0]
    assert np.abs(grid[:64, :64] - np.asarray(plain).astype(int)).max() == 0  # strength 0 is the base model
    assert np.abs(grid[:64, 64:] - grid[:64, :64]).max() > 0  # strength 1 differs
    assert main(["sample", str(adapter), "--prompt", "x", "-o", str(out)]) == 2  # never overwrites


def _dreambooth_folders(tmp_path):
    from sdlora.demo.shapes import DEMO_DATASETS, ShapeScene, write_dataset

    instance = write_dataset(tmp_path / "instance", DEMO_DATASETS["demo-shapes"][:2])
    for caption in instance.glob("*.txt"):
        caption.unlink()  # DreamBooth: uncaptioned images take the instance prompt
    classes = write_dataset(tmp_path / "classes", [ShapeScene("circle", "blue", "white"),
                                                   ShapeScene("square", "green", "white")])
    return instance, classes


def test_prior_loss_is_computed_on_the_class_half(tmp_path, tiny_sd15):
    from sdlora.train.step import diffusion_target
    from sdlora.train.trainer import Trainer

    instance, classes = _dreambooth_folders(tmp_path)
    cfg = _config(tiny_sd15, instance, "dreambooth.enabled=true", "dreambooth.instance_prompt=a sks shape",
                  f"dreambooth.class_data_dir={classes}", "dreambooth.prior_loss_weight=0.5")
    trainer = Trainer(cfg, tmp_path / "run", lambda event: None)
    from sdlora.train.setup import build_run

    trainer.parts = parts = build_run(cfg, warn=print)
    batch = parts.prior.paired(parts.stream.batch(0), 0)
    assert batch.captions[:2] == ["a sks shape"] * 2
    assert sorted(batch.captions[2:]) == ["a blue circle on a white background", "a green square on a white background"]

    state = parts.generator.get_state()
    loss, logged = trainer.micro_step()
    parts.generator.set_state(state)  # replay the same draws by hand
    with torch.no_grad():
        latents = parts.latent_source.latents(batch, parts.generator)
        hidden = parts.text_source.embeddings(batch.captions).hidden
        noise = torch.randn(latents.shape, generator=parts.generator)
        timesteps = torch.randint(0, 1000, (4,), generator=parts.generator)
        scheduler = parts.base.noise_scheduler
        prediction = parts.base.unet(scheduler.add_noise(latents, noise, timesteps), timesteps, hidden).sample
        errors = ((prediction - diffusion_target(scheduler, latents, noise, timesteps)) ** 2).mean(dim=(1, 2, 3))
    instance_loss, prior_loss = errors[:2].mean().item(), errors[2:].mean().item()
    assert logged["instance_loss"] == pytest.approx(instance_loss, abs=1e-6)
    assert logged["prior_loss"] == pytest.approx(prior_loss, abs=1e-6)
    assert loss.item() == pytest.approx(instance_loss + 0.5 * prior_loss, abs=1e-6)
    assert abs(instance_loss - prior_loss) > 1e-4  # the halves really differ


def test_generated_class_images_are_made_once_and_reused(tmp_path, tiny_sd15):
    instance, _ = _dreambooth_folders(tmp_path)
    db = ["dreambooth.enabled=true", "dreambooth.instance_prompt=a sks shape", "dreambooth.class_prompt=a shape",
          "dreambooth.num_class_images=3", "dreambooth.class_generation_steps=2", "train.max_steps=2"]
    run_training(_config(tiny_sd15, instance, *db), tmp_path / "one", progress=False)
    first = _events(tmp_path / "one", "class_images")[0]
    assert (first["generated"], first["reused"]) == (3, 0)
    steps = _events(tmp_path / "one", "step")
    assert all(s["loss"] == pytest.approx(s["instance_loss"] + s["prior_loss"], abs=1e-6) for s in steps)

    run_training(_config(tiny_sd15, instance, *db), tmp_path / "two", progress=False)
    second = _events(tmp_path / "two", "class_images")[0]
    assert (second["generated"], second["reused"], second["folder"]) == (0, 3, first["folder"])
    run_training(_config(tiny_sd15, instance, *db, "dreambooth.num_class_images=4"), tmp_path / "three", progress=False)
    third = _events(tmp_path / "three", "class_images")[0]
    assert (third["generated"], third["reused"]) == (1, 3)

    from sdlora.data.plan import make_plan

    plan = make_plan(_config(tiny_sd15, instance, *db, "dreambooth.num_class_images=6"), with_lr=False,
                     with_memory=False)
    assert (plan.class_images["found"], plan.class_images["to_generate"]) == (4, 2)


def test_builtin_world_images_serve_as_captioned_class_images(tmp_path, tiny_sd15):
    from sdlora.data.dreambooth import class_images_in
    from sdlora.data.plan import make_plan
    from sdlora.demo.shapes import DEMO_DATASETS
    from sdlora.train.class_images import prepare_class_images

    instance, _ = _dreambooth_folders(tmp_path)
    cfg = _config(tiny_sd15, instance, "dreambooth.enabled=true", "dreambooth.instance_prompt=a sks shape",
                  "dreambooth.class_data_dir=builtin:demo-world", "dreambooth.num_class_images=48")
    given = prepare_class_images(cfg, base=None)  # a given folder: nothing is generated, no model needed
    assert (given.generated, given.reused) == (0, 48)
    captions = [c.record.caption for c in class_images_in(given.folder, "", 48, 64)]
    assert captions == [scene.caption for scene in DEMO_DATASETS["demo-world"]]
    plan = make_plan(cfg, with_lr=False, with_memory=False)
    assert plan.class_images == {"folder": str(given.folder), "found": 48, "to_generate": 0, "given": True}


def test_dreambooth_config_errors():
    with pytest.raises(ConfigError, match="needs dreambooth.instance_prompt"):
        load_config(None, ["dreambooth.enabled=true"])
    with pytest.raises(ConfigError, match="needs dreambooth.class_prompt"):
        load_config(None, ["dreambooth.enabled=true", "dreambooth.instance_prompt=a sks dog"])


def test_validation_loss_is_deterministic_and_leaves_training_alone(tmp_path, tiny_sd15, image_folder):
    from sdlora.demo.shapes import DEMO_DATASETS, write_dataset

    held_out = write_dataset(tmp_path / "held-out", DEMO_DATASETS["demo-shapes"][4:7])
    steps = ["train.max_steps=4", "optim.learning_rate=1e-2"]
    validated = [f"validation.path={held_out}", "validation.every_n_steps=2"]
    runs = [run_training(_config(tiny_sd15, image_folder, *steps, *validated), tmp_path / name, progress=False)
            for name in ("a", "b")]
    plain = run_training(_config(tiny_sd15, image_folder, *steps), tmp_path / "plain", progress=False)
    losses = [[(e["step"], e["loss"]) for e in _events(tmp_path / name, "validation")] for name in ("a", "b")]
    assert [s for s, _ in losses[0]] == [2, 4]
    assert losses[0] == losses[1]  # bit-for-bit the same numbers
    assert losses[0][0][1] != losses[0][1][1]  # and they move as the LoRA learns
    a, b = load_file(runs[0]), load_file(plain)
    assert all(torch.equal(a[k], b[k]) for k in a)
