"""Peak-memory preflight (breakdown) and train.memory = 'auto' (the chooser), on real model shapes
built on the meta device (no weights) and fake device sizes."""
from __future__ import annotations

import json

import pytest

from sdlora.config import from_dict, load_config
from sdlora.train.memory import GIB, _meta_vae, estimate, facts_of_modules
from sdlora.train.memory_auto import choose, offload_blockers

SD15_UNET_PARAMS = 859_520_964  # the published SD1.5 UNet size
CLIP_L_TEXT_PARAMS = 123_060_480


@pytest.fixture(scope="module")
def sd15_facts():
    from sdlora.export.shapes import meta_components, standard_shape

    return facts_of_modules("sd15", {**meta_components(standard_shape("sd15")), "vae": _meta_vae(None)})


def _cfg(**sections):
    return from_dict({name: values for name, values in sections.items()})


def test_breakdown_counts_the_real_sd15_components(sd15_facts):
    assert sd15_facts.components["unet"].total == SD15_UNET_PARAMS
    assert sd15_facts.components["text_encoder"].total == CLIP_L_TEXT_PARAMS
    est = estimate(sd15_facts, _cfg(lora={"rank": 16}), (512, 512), "cpu")
    parts = dict(est.parts)
    assert parts["unet weights (fp32)"] == SD15_UNET_PARAMS * 4
    assert parts["process baseline (Python + libraries)"] > 0
    assert est.total == sum(parts.values())
    assert any(line.startswith("peak RAM (RSS) estimate:") for line in est.lines())


def test_quantization_optimizer_batch_and_checkpointing_move_the_right_parts(sd15_facts):
    base = estimate(sd15_facts, _cfg(optim={"optimizer": "adamw", "min_8bit_size": 1}), (512, 512), "cpu")
    int8 = estimate(sd15_facts, _cfg(model={"quantize": "int8"}), (512, 512), "cpu")
    nf4 = estimate(sd15_facts, _cfg(model={"quantize": "nf4"}), (512, 512), "cpu")
    unet = [e.part("unet weights") for e in (base, int8, nf4)]
    linear = sd15_facts.components["unet"].linear
    assert unet[0] - unet[1] == pytest.approx(3 * linear, rel=0.01)  # fp32 -> int8 saves 3 bytes per weight
    assert unet[1] - unet[2] == pytest.approx(linear / 2, rel=0.05)  # int8 -> nf4 about half a byte more
    assert nf4.part("vae weights") == base.part("vae weights")  # the VAE is never quantized
    adam8 = estimate(sd15_facts, _cfg(optim={"optimizer": "adamw8bit", "min_8bit_size": 1}), (512, 512), "cpu")
    assert adam8.part("optimizer state") == pytest.approx(base.part("optimizer state") / 4, rel=0.02)
    batch2 = estimate(sd15_facts, _cfg(train={"batch_size": 2}), (512, 512), "cpu")
    ckpt = estimate(sd15_facts, _cfg(train={"gradient_checkpointing": True}), (512, 512), "cpu")
    assert batch2.part("activations") == 2 * base.part("activations")
    prior = estimate(sd15_facts, _cfg(dreambooth={"enabled": True, "instance_prompt": "a sks dog",
                                                  "class_prompt": "a dog"}), (512, 512), "cpu")
    assert prior.part("activations") == batch2.part("activations")  # one class image per instance image
    assert ckpt.part("activations") == pytest.approx(base.part("activations") * 23 / 43)


def test_offloaded_encoders_count_zero_on_cuda_only(sd15_facts):
    cfg = _cfg(train={"offload_encoders": True})
    on_gpu, on_cpu = estimate(sd15_facts, cfg, (512, 512), "cuda"), estimate(sd15_facts, cfg, (512, 512), "cpu")
    assert on_gpu.part("text_encoder weights") == on_gpu.part("vae weights") == 0
    assert on_cpu.part("text_encoder weights") == CLIP_L_TEXT_PARAMS * 4
    assert "CUDA context" in on_gpu.parts[0][0]


def test_auto_turns_savers_on_in_order_until_it_fits(sd15_facts):
    cfg = _cfg(train={"mixed_precision": "fp16", "batch_size": 4}, optim={"optimizer": "adamw"})
    start = estimate(sd15_facts, cfg, (512, 512), "cuda").total
    roomy = choose(sd15_facts, cfg, (512, 512), "cuda", start + GIB)
    assert roomy.changes == [] and roomy.fits
    just_below = choose(sd15_facts, cfg, (512, 512), "cuda", start - 1)
    assert just_below.changes[:2] == ["data.cache_latents = 'memory'", "data.cache_text_embeddings = true"]
    assert just_below.fits and just_below.cfg.train.gradient_checkpointing is False  # stopped early
    tight = choose(sd15_facts, cfg, (512, 512), "cuda", 4 * GIB)
    print("4 GiB:", tight.summary())
    keys = [change.split(" = ")[0] for change in tight.changes]
    assert keys == ["data.cache_latents", "data.cache_text_embeddings", "train.offload_encoders", "optim.optimizer",
                    "train.gradient_checkpointing", "model.quantize", "train.batch_size", "train.gradient_accumulation"]
    assert tight.fits and tight.after.total <= 4 * GIB < tight.before.total
    assert tight.cfg.model.quantize == "nf4"
    assert tight.cfg.train.batch_size * tight.cfg.train.gradient_accumulation == 4  # effective batch kept
    hopeless = choose(sd15_facts, cfg, (512, 512), "cuda", GIB)
    assert not hopeless.fits and "does NOT fit" in hopeless.summary()
    assert hopeless.cfg.train.batch_size == 1 and hopeless.cfg.train.gradient_accumulation == 4


def test_auto_never_undoes_a_users_choice(sd15_facts):
    cfg = _cfg(model={"quantize": "nf4"}, train={"gradient_checkpointing": True}, optim={"optimizer": "prodigy"})
    choice = choose(sd15_facts, cfg, (512, 512), "cpu", GIB)
    assert choice.cfg.model.quantize == "nf4" and choice.cfg.train.gradient_checkpointing
    assert choice.cfg.optim.optimizer == "prodigy"  # only adamw is swapped for its 8-bit twin
    assert not any("offload" in change for change in choice.changes)  # nothing to offload to on CPU


def test_offload_is_blocked_by_options_that_need_the_encoders():
    ok = _cfg(data={"cache_latents": "memory", "cache_text_embeddings": True})
    assert offload_blockers(ok) == []
    flipped = _cfg(data={"cache_latents": "memory", "cache_text_embeddings": True, "random_flip": True})
    assert offload_blockers(flipped) == ["data.random_flip = true"]


def test_plan_shows_breakdown_warning_and_auto_choice(tiny_sd15, image_folder):
    from sdlora.data.plan import format_plan, make_plan

    base = [f"model.path={tiny_sd15}", f"data.path={image_folder}", "data.resolution=64"]
    roomy = make_plan(load_config(None, base + ["train.memory_target_gb=64"]))
    assert roomy.memory["fits"] and "WARNING" not in roomy.memory_note
    assert "process baseline" in format_plan(roomy) and "unet weights (fp32)" in format_plan(roomy)
    small = make_plan(load_config(None, base + ["train.memory_target_gb=0.3"]))  # below the library baseline
    assert not small.memory["fits"]
    assert "WARNING: the estimate" in small.memory_note and "exceeds the target 307.20 MiB" in small.memory_note
    assert "even with every saver" in small.memory_note
    auto = make_plan(load_config(None, base + ["train.memory=auto", "train.memory_target_gb=0.3"]))
    assert auto.memory_note.startswith("memory = auto chose: data.cache_latents = 'memory'")
    assert "model.quantize = 'nf4'" in auto.memory_note and auto.memory["auto_changes"]


def test_auto_run_applies_and_reports_its_choice(tiny_sd15, image_folder, tmp_path):
    from sdlora.events import read_events
    from sdlora.train.run import run_training

    cfg = load_config(None, [f"model.path={tiny_sd15}", f"data.path={image_folder}", "data.resolution=64",
                             "train.max_steps=1", "train.memory=auto", "train.memory_target_gb=0.3",
                             "save.state_every_n_steps=0"])
    run_training(cfg, tmp_path / "run", progress=False)
    events = list(read_events(tmp_path / "run" / "events.jsonl"))
    memory = [e for e in events if e["type"] == "memory"]
    assert len(memory) == 1 and not memory[0]["fits"] and "model.quantize = 'nf4'" in memory[0]["changes"]
    assert events[-1]["type"] == "finished"
    used = load_config(tmp_path / "run" / "config.toml")
    assert used.model.quantize == "nf4" and used.train.gradient_checkpointing and used.data.cache_latents == "memory"
    assert json.dumps(memory[0])  # the event is plain JSON for the UI


def test_filled_caches_serve_every_later_epoch_without_the_encoders(tiny_sd15, image_folder, tmp_path):
    """What train.offload_encoders relies on (its move to the CPU needs CUDA): after one epoch is
    cached, training never calls the VAE or the text encoder again."""
    from sdlora.train.offload import fill_caches
    from sdlora.train.setup import build_run
    from sdlora.train.trainer import Trainer

    cfg = load_config(None, [f"model.path={tiny_sd15}", f"data.path={image_folder}", "data.resolution=64",
                             "data.cache_latents=memory", "data.cache_text_embeddings=true", "train.batch_size=2",
                             "lora.rank=4", "train.max_steps=100"])
    assert offload_blockers(cfg) == []
    trainer = Trainer(cfg, tmp_path / "run", emit=lambda event: None)
    trainer.parts = build_run(cfg, warn=lambda message: None)
    fill_caches(trainer.parts)

    def refuse(*args, **kwargs):
        raise AssertionError("an encoder ran after the caches were filled")

    trainer.parts.base.vae.encode = refuse
    trainer.parts.base.text_encoder.forward = refuse
    epochs = 2  # the second epoch reshuffles the batches: every item must still be a cache hit
    losses = [trainer.optimizer_step()["loss"] for _ in range(epochs * trainer.parts.stream.batches_per_epoch)]
    assert len(losses) == 4 and all(loss == loss for loss in losses)
