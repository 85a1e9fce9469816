"""End to end on the tiny model: the demo preset through the CLI, the adapter in diffusers, stop requests."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sdlora.config import load_config
from sdlora.events import read_events
from sdlora.train.run import run_training
from tests.conftest import REPO, run_cli


def _pipeline_output(folder, adapter=None):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if adapter is not None:
        pipe.load_lora_weights(str(adapter.parent), weight_name=adapter.name)
    generator = torch.Generator().manual_seed(0)
    return pipe("a red circle on a white background", num_inference_steps=2, generator=generator, output_type="np").images[0]


def test_demo_preset_trains_through_the_cli(tmp_path, tiny_sd15):
    run_dir = tmp_path / "run"
    result = run_cli("train", str(REPO / "presets/demo-tiny.toml"), "--output", str(run_dir), "--quiet",
                     "--set", "train.max_steps=6", "--set", "save.every_n_steps=3", "--set", "sample.every_n_steps=3")
    assert result.returncode == 0, result.stderr
    adapter = run_dir / "demo.safetensors"
    assert adapter.is_file() and (run_dir / "demo-step000003.safetensors").is_file()
    resolved = load_config(run_dir / "config.toml")
    assert (resolved.train.max_steps, resolved.model.path) == (6, "builtin:tiny-sd15")

    events = list(read_events(run_dir / "events.jsonl"))
    types = [e["type"] for e in events]
    assert types[0] == "started" and types[-1] == "finished"
    steps = [e for e in events if e["type"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4, 5, 6]
    assert all(e["total"] == 6 and np.isfinite(e["loss"]) and e["lr"] > 0 for e in steps)
    assert [e["step"] for e in events if e["type"] == "sampled"] == [3, 6]
    saved = [e for e in events if e["type"] == "saved"]
    assert [e["step"] for e in saved] == [3, 6] and saved[-1]["path"] == str(adapter)
    started = events[0]
    assert started["trainable_params"] > 0 and started["family"] == "sd15" and started["num_images"] == 8
    previews = sorted((run_dir / "samples").glob("step000006-*.png"))
    assert len(previews) == 3  # two prompts + grid
    from PIL import Image

    settings = json.loads(Image.open(previews[0]).text["parameters"])
    assert settings["prompt"] == "a red circle on a white background" and settings["step"] == 6

    base_image = _pipeline_output(tiny_sd15)
    lora_image = _pipeline_output(tiny_sd15, adapter)
    assert np.abs(lora_image - base_image).max() > 1e-3  # the adapter loads and changes the output


def test_adapter_file_reproduces_the_in_memory_model(tmp_path, image_folder, tiny_sd15):
    """The saved file, loaded by diffusers, gives the trained UNet's exact output (alpha honoured)."""
    from diffusers import StableDiffusionPipeline

    from sdlora.train.trainer import Trainer

    cfg = load_config(None, [f"model.path={tiny_sd15}", f"data.path={image_folder}", "data.resolution=64",
                             "lora.rank=4", "lora.alpha=2", "optim.optimizer=adamw", "optim.learning_rate=1e-2",
                             "train.max_steps=3"])
    events = []
    trainer = Trainer(cfg, tmp_path / "run", events.append)
    adapter = trainer.run()
    g = torch.Generator().manual_seed(1)
    sample, hidden = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    t = torch.tensor([500])
    unet = trainer.parts.accelerator.unwrap_model(trainer.parts.base.unet).eval()
    with torch.no_grad():
        trained = unet(sample, t, hidden).sample
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15, safety_checker=None, requires_safety_checker=False)
    with torch.no_grad():
        plain = pipe.unet(sample, t, hidden).sample
    pipe.load_lora_weights(str(adapter.parent), weight_name=adapter.name)
    with torch.no_grad():
        loaded = pipe.unet(sample, t, hidden).sample
    assert (loaded - trained).abs().max().item() <= 1e-5
    assert (loaded - plain).abs().max().item() > 1e-3


def test_stop_request_ends_at_a_step_boundary_after_saving(tmp_path, image_folder, tiny_sd15):
    from sdlora.train.control import request

    cfg = load_config(None, [f"model.path={tiny_sd15}", f"data.path={image_folder}", "data.resolution=64",
                             "train.max_steps=50", "optim.optimizer=adamw"])
    run_dir = tmp_path / "run"

    def stop_after_two(event):
        if event.type == "step" and event.step == 2:
            request(run_dir, "stop")

    path = run_training(cfg, run_dir, progress=False, extra_sink=stop_after_two)
    events = list(read_events(run_dir / "events.jsonl"))
    assert events[-1]["type"] == "finished" and events[-1]["stopped_early"] is True
    assert events[-1]["step"] == 2 and [e["step"] for e in events if e["type"] == "saved"] == [2]
    assert path.is_file()


def test_a_second_run_into_the_same_folder_is_refused(tmp_path, image_folder, tiny_sd15):
    from sdlora.errors import SdloraError

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "events.jsonl").write_text("")
    cfg = load_config(None, [f"model.path={tiny_sd15}", f"data.path={image_folder}"])
    with pytest.raises(SdloraError, match="already holds a training run"):
        run_training(cfg, run_dir, progress=False)
