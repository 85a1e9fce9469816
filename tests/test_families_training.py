"""SDXL and SD2-v training end to end on tiny models: conditioning equals diffusers' own, the saved
adapter (kohya and diffusers layouts) reproduces the trained networks through diffusers' loader,
both text encoders are cached exactly, the fp32 VAE path, clip skip, resume."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tests.export_fixtures import max_output_diff, outputs

from sdlora.config import load_config
from sdlora.config.schema import ModelSection
from sdlora.errors import ConfigError, ModelError
from sdlora.export.adapter import adapter_from_models
from sdlora.export.io import write_lora_file
from sdlora.export.shapes import shape_of_models
from sdlora.models.loading import builtin_model_path, load_base_model
from sdlora.models.prompts import PromptEncoder, sdxl_time_ids
from sdlora.train.run import run_training
from sdlora.train.trainer import Trainer

BUILTIN = {"sd2-v": "tiny-sd2-v", "sdxl": "tiny-sdxl"}


def _config(model: str, images, *extra: str):
    return load_config(None, [f"model.path={model}", f"data.path={images}", "data.resolution=64", "lora.rank=4",
                              "lora.alpha=2", "optim.optimizer=adamw", "optim.learning_rate=1e-2",
                              "optim.text_encoder_lr=1e-2", "train.max_steps=3", *extra])


def _pipeline(folder):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _trained_networks(trainer):
    unwrap = trainer.parts.accelerator.unwrap_model
    base = trainer.parts.base
    networks = SimpleNamespace(unet=unwrap(base.unet).eval(), text_encoder=unwrap(base.text_encoder).eval())
    if base.text_encoder_2 is not None:
        networks.text_encoder_2 = unwrap(base.text_encoder_2).eval()
    return networks


@pytest.mark.parametrize("family", ["sd2-v", "sdxl"])
def test_training_exports_load_exactly_in_diffusers(tmp_path, image_folder, family):
    """Train UNet + every text encoder a few steps; both layouts, loaded by diffusers, give the
    trained networks' outputs."""
    folder = builtin_model_path(BUILTIN[family])
    cfg = _config(f"builtin:{BUILTIN[family]}", image_folder, "lora.train_text_encoder=true")
    events = []
    trainer = Trainer(cfg, tmp_path / "run", events.append)
    kohya_file = trainer.run()
    assert [e.type for e in events if e.type == "step"] == ["step"] * 3
    started = events[0]
    assert started.family == family
    networks = _trained_networks(trainer)
    trained = outputs(networks, family)
    components = vars(networks)
    diffusers_file = tmp_path / "diffusers-layout.safetensors"
    write_lora_file(adapter_from_models(family, **components), diffusers_file, "diffusers", "fp32",
                    shape_of_models(family, **components))
    plain = outputs(_pipeline(folder), family)
    assert set(trained) == ({"unet", "text_encoder", "text_encoder_2"} if family == "sdxl" else {"unet", "text_encoder"})
    for path in (kohya_file, diffusers_file):
        pipe = _pipeline(folder)
        pipe.load_lora_weights(str(path.parent), weight_name=path.name)
        loaded = outputs(pipe, family)
        assert max_output_diff(loaded, trained) <= 1e-5, path.name
        assert min((loaded[k] - plain[k]).abs().max().item() for k in plain) > 1e-4  # each network learned


@pytest.fixture(scope="module")
def tiny_sdxl():
    return load_base_model(ModelSection(path="builtin:tiny-sdxl"))


def test_sdxl_prompt_encoding_equals_the_diffusers_pipeline(tiny_sdxl):
    """Hidden states (both encoders' penultimate layers side by side) and bigG's pooled output are
    what StableDiffusionXLPipeline.encode_prompt computes, so training matches inference."""
    pipe = _pipeline(tiny_sdxl.folder)
    captions = ["a red circle on a blue background", ""]
    ours = PromptEncoder("sdxl", tiny_sdxl.tokenizers, tiny_sdxl.text_encoders)(captions)
    with torch.no_grad():
        hidden, _, pooled, _ = pipe.encode_prompt(captions, device="cpu", do_classifier_free_guidance=False)
    assert ours.hidden.shape == (2, 77, 64) and ours.pooled.shape == (2, 32)
    assert (ours.hidden - hidden).abs().max().item() == 0.0
    assert (ours.pooled - pooled).abs().max().item() == 0.0
    with pytest.raises(ConfigError, match="model.clip_skip = 2 skips more layers"):
        PromptEncoder("sdxl", tiny_sdxl.tokenizers, tiny_sdxl.text_encoders, clip_skip=2)  # tiny encoders: 2 layers


def test_sd_clip_skip_is_the_penultimate_layer_through_the_final_norm(tiny_sd15):
    """A1111 / kohya clip skip 2. (diffusers 0.42's own SD clip_skip path reads text_encoder.text_model,
    which transformers 5 removed, so the reference is written out here.)"""
    pipe = _pipeline(tiny_sd15)
    captions = ["a green square on a white background"]
    with torch.no_grad():
        plain, _ = pipe.encode_prompt(captions, "cpu", 1, False)
        ids = pipe.tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
        penultimate = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
        skipped = pipe.text_encoder.final_layer_norm(penultimate)
        ours_plain = PromptEncoder("sd15", [pipe.tokenizer], [pipe.text_encoder])(captions).hidden
        ours_skip = PromptEncoder("sd15", [pipe.tokenizer], [pipe.text_encoder], clip_skip=2)(captions).hidden
    assert (ours_plain - plain).abs().max().item() == 0.0
    assert (ours_skip - skipped).abs().max().item() == 0.0
    assert (skipped - plain).abs().max().item() > 1e-3
    with pytest.raises(ConfigError, match="use a value from 1 to 2"):
        PromptEncoder("sd15", [pipe.tokenizer], [pipe.text_encoder], clip_skip=3)


def test_sdxl_time_ids_come_from_each_images_size_bucket_and_crop():
    from sdlora.data.images import CropPlan

    def item(size, crop, flip=False):
        return SimpleNamespace(example=SimpleNamespace(size=size), crop=crop, flip=flip)

    # A 1200x800 photo in a 768x512 bucket: resized to 800x533, cropped 16 px from left, 10 from top.
    landscape = item((1200, 800), CropPlan((800, 533), 16, 10, (768, 512)))
    flipped = item((1200, 800), CropPlan((800, 533), 16, 10, (768, 512)), flip=True)
    square = item((64, 64), CropPlan((64, 64), 0, 0, (64, 64)))
    ids = sdxl_time_ids([landscape, flipped, square])
    # flipped: 800 - 16 - 768 = 16 px from the flipped image's left edge (a centred crop is symmetric)
    assert ids.tolist() == [[800, 1200, 10, 16, 512, 768], [800, 1200, 10, 16, 512, 768], [64, 64, 0, 0, 64, 64]]
    off = item((1200, 800), CropPlan((800, 533), 4, 0, (768, 512)), flip=True)
    assert sdxl_time_ids([off]).tolist() == [[800, 1200, 0, 28, 512, 768]]


def test_sdxl_unet_sees_the_batch_time_ids(tmp_path, image_folder, monkeypatch):
    """The loss of a micro-step feeds the UNet the pooled text and the drawn items' time ids."""
    cfg = _config("builtin:tiny-sdxl", image_folder, "data.enable_buckets=false")
    trainer = Trainer(cfg, tmp_path / "run", lambda e: None)
    from sdlora.train.setup import build_run

    trainer.parts = build_run(cfg, warn=lambda m: None)
    seen = {}
    unet = trainer.parts.accelerator.unwrap_model(trainer.parts.base.unet)
    original = unet.forward

    def spy(sample, timestep, encoder_hidden_states, **kwargs):
        seen.update(kwargs["added_cond_kwargs"], hidden=encoder_hidden_states)
        return original(sample, timestep, encoder_hidden_states, **kwargs)

    monkeypatch.setattr(unet, "forward", spy)
    batch = trainer.parts.stream.batch(0)
    trainer.micro_step()
    assert seen["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]] * len(batch.items)
    expected = trainer.parts.text_source.embeddings(batch.captions)
    assert torch.equal(seen["text_embeds"], expected.pooled) and torch.equal(seen["hidden"], expected.hidden)


def test_both_text_encoders_are_cached_exactly(tiny_sdxl):
    from sdlora.train.inputs import TextSource

    encode = PromptEncoder("sdxl", tiny_sdxl.tokenizers, tiny_sdxl.text_encoders)
    cached, plain = TextSource(encode, True, False), TextSource(encode, False, False)
    draws = [["a red circle", "a blue square"], ["a blue square", ""], ["a red circle", "a red circle"]]
    for captions in draws:
        a, b = cached.embeddings(captions), plain.embeddings(captions)
        assert torch.equal(a.hidden, b.hidden) and torch.equal(a.pooled, b.pooled)
    assert (cached.cache.misses, cached.cache.hits) == (3, 3)
    assert TextSource(encode, True, True).cache is None  # never cached while the encoders learn


def test_sdxl_vae_stays_fp32_under_bf16(tmp_path, image_folder):
    cfg = _config("builtin:tiny-sdxl", image_folder, "train.mixed_precision=bf16", "train.max_steps=2",
                  "data.cache_latents=memory")
    events = []
    trainer = Trainer(cfg, tmp_path / "run", events.append)
    trainer.run()
    base = trainer.parts.base
    assert base.vae.dtype == torch.float32 and base.text_encoder_2.dtype == torch.bfloat16
    assert all(torch.isfinite(torch.tensor(e.loss)) for e in events if e.type == "step")
    same = _config("builtin:tiny-sdxl", image_folder, "train.mixed_precision=bf16", "model.vae_precision=same")
    from sdlora.train.setup import vae_dtype_for

    assert vae_dtype_for(same, "sdxl") == torch.bfloat16 and vae_dtype_for(cfg, "sd15") == torch.bfloat16


def test_vae_path_replaces_the_models_vae(tmp_path, tiny_sd15):
    from sdlora.models.tiny import build_tiny_pipeline

    other = build_tiny_pipeline("sd15", seed=7).vae
    other.save_pretrained(tmp_path / "vae")
    model = ModelSection(path=str(tiny_sd15), vae_path=str(tmp_path / "vae"))
    base = load_base_model(model)
    assert torch.equal(base.vae.encoder.conv_in.weight, other.encoder.conv_in.weight)
    model.vae_path = str(tmp_path)
    with pytest.raises(ModelError, match="not a diffusers VAE folder"):
        load_base_model(model)


def test_second_text_encoder_learning_rate_and_switch(tmp_path, image_folder):
    from sdlora.train.setup import make_accelerator, prepare_model

    def groups(*extra):
        cfg = _config("builtin:tiny-sdxl", image_folder, "lora.train_text_encoder=true", "optim.text_encoder_lr=3e-5",
                      *extra)
        base = load_base_model(cfg.model)
        return base, prepare_model(base, cfg, make_accelerator(cfg.train))

    base, both = groups("optim.text_encoder_2_lr=2e-5")
    assert [g["lr"] for g in both] == [1e-2, 3e-5, 2e-5]
    assert {id(p) for p in both[2]["params"]} == {id(p) for p in base.text_encoder_2.parameters() if p.requires_grad}
    _, same = groups()
    assert [g["lr"] for g in same] == [1e-2, 3e-5, 3e-5]  # 0 = text_encoder_lr
    base, first_only = groups("lora.train_text_encoder_2=false")
    assert len(first_only) == 2 and not any(p.requires_grad for p in base.text_encoder_2.parameters())


def test_sdxl_resume_is_exact(tmp_path, image_folder):
    from sdlora.train.control import request

    cfg = _config("builtin:tiny-sdxl", image_folder, "lora.train_text_encoder=true", "train.max_steps=4",
                  "data.cache_text_embeddings=true")
    straight = run_training(cfg, tmp_path / "straight", progress=False)
    resumed_dir = tmp_path / "resumed"

    def stop_after_two(event):
        if event.type == "step" and event.step == 2:
            request(resumed_dir, "stop")

    run_training(cfg, resumed_dir, progress=False, extra_sink=stop_after_two)
    resumed = run_training(cfg, resumed_dir, progress=False, resume=True)
    from safetensors.torch import load_file

    a, b = load_file(straight), load_file(resumed)
    assert a.keys() == b.keys() and any(k.startswith("lora_te2_") for k in a)
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0


def test_clip_skip_trains_previews_and_is_recorded(tmp_path, image_folder, tiny_sd15):
    from safetensors import safe_open

    cfg = _config(str(tiny_sd15), image_folder, "model.clip_skip=2", "train.max_steps=1",
                  "sample.prompts=['a red circle --n blurry']", "sample.steps=2")
    events = []
    path = Trainer(cfg, tmp_path / "run", events.append).run()
    with safe_open(str(path), "pt") as handle:
        assert handle.metadata()["ss_clip_skip"] == "2"
    sampled = [e for e in events if e.type == "sampled"]
    assert len(sampled) == 1 and len(sampled[0].paths) == 2  # the preview and its grid


def test_sdxl_dreambooth_with_generated_class_images_and_validation(tmp_path, image_folder):
    """Class images come from the SDXL pipeline; prior pairs and validation batches carry time ids."""
    from sdlora.demo.shapes import DEMO_DATASETS, write_dataset
    from sdlora.events import read_events

    held_out = write_dataset(tmp_path / "held-out", DEMO_DATASETS["demo-shapes"][4:6])
    cfg = _config("builtin:tiny-sdxl", image_folder, "dreambooth.enabled=true", "dreambooth.instance_prompt=a sks shape",
                  "dreambooth.class_prompt=a shape", "dreambooth.num_class_images=2",
                  "dreambooth.class_generation_steps=2", "train.max_steps=2", f"validation.path={held_out}",
                  "validation.every_n_steps=1")
    run_training(cfg, tmp_path / "run", progress=False)
    events = list(read_events(tmp_path / "run" / "events.jsonl"))
    kinds = {e["type"]: e for e in events}
    assert kinds["class_images"]["generated"] == 2
    steps = [e for e in events if e["type"] == "step"]
    assert all(s["loss"] == pytest.approx(s["instance_loss"] + s["prior_loss"], abs=1e-6) for s in steps)
    validation = [e["loss"] for e in events if e["type"] == "validation"]
    assert len(validation) == 2 and all(v > 0 for v in validation)
