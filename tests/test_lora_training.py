"""LoRA injection and the training math on the tiny model: parameter counts, overfitting, v-prediction."""
from __future__ import annotations

import pytest
import torch

from sdlora.config import load_config
from sdlora.lora.inject import TEXT_ENCODER_TARGETS, UNET_TARGETS, count_parameters
from sdlora.models.loading import load_base_model
from sdlora.train.setup import make_accelerator, plan_steps, prepare_model
from sdlora.train.step import diffusion_loss, diffusion_target, encode_latents, encode_text, tokenize


def _config(model_path, *overrides):
    return load_config(None, [f"model.path={model_path}", "data.resolution=64", *overrides])


def _expected_lora_params(module, targets, rank) -> int:
    """r * (in + out) for every targeted Linear / 1x1 conv, counted independently of PEFT."""
    total = 0
    for name, layer in module.named_modules():
        if any(name == t or name.endswith("." + t) for t in targets) and hasattr(layer, "weight"):
            weight = layer.weight
            total += rank * (weight.shape[0] + weight.shape[1])
    return total


@pytest.mark.parametrize("unet_targets", ["attn", "attn-ff"])
def test_trainable_parameter_count_is_rank_times_in_plus_out(tiny_sd15, unet_targets):
    cfg = _config(tiny_sd15, "lora.rank=4", f"lora.unet_targets={unet_targets}", "lora.train_text_encoder=true")
    base = load_base_model(cfg.model)
    expected = _expected_lora_params(base.unet, UNET_TARGETS[unet_targets], 4)
    expected += _expected_lora_params(base.text_encoder, TEXT_ENCODER_TARGETS, 4)
    groups = prepare_model(base, cfg, make_accelerator(cfg.train))
    counts = count_parameters(base.unet, base.text_encoder)
    assert counts.trainable == expected == sum(p.numel() for g in groups for p in g["params"])
    assert len(groups) == 2 and groups[1]["lr"] == cfg.optim.text_encoder_lr
    assert str(counts).startswith(f"trainable params: {expected:,d} || all params: ")
    if unet_targets == "attn-ff":
        assert expected > _expected_lora_params(base.unet, UNET_TARGETS["attn"], 4)


def _fixed_batch(base, image_folder, generator):
    from sdlora.data.scan import scan_for_training
    from sdlora.data.stream import BatchStream, build_examples

    cfg = load_config(None, [f"data.path={image_folder}", "data.resolution=64"])
    batch = BatchStream(build_examples(scan_for_training(cfg.data), cfg.data), cfg.data, batch_size=4, seed=0).batch(0)
    with torch.no_grad():
        latents = encode_latents(base.vae, torch.from_numpy(batch.pixels), generator)
        hidden = encode_text(base.text_encoder, tokenize(base.tokenizer, batch.captions))
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, 1000, (latents.shape[0],), generator=generator)
    return latents, hidden, noise, timesteps


@pytest.mark.parametrize("optimizer", ["adamw8bit", "adamw"])
def test_overfitting_one_fixed_batch_drops_the_loss(tiny_sd15, image_folder, optimizer):
    from sdlora.train.optim import build_optimizer

    cfg = _config(tiny_sd15, "lora.rank=8", f"optim.optimizer={optimizer}", "optim.min_8bit_size=1",
                  "optim.learning_rate=1e-2", "optim.weight_decay=0.0")
    base = load_base_model(cfg.model)
    groups = prepare_model(base, cfg, make_accelerator(cfg.train))
    warnings = []
    opt = build_optimizer(groups, cfg.optim, warnings.append)
    assert not warnings
    latents, hidden, noise, timesteps = _fixed_batch(base, image_folder, torch.Generator().manual_seed(0))
    losses = []
    for _ in range(30):
        loss, _ = diffusion_loss(base.unet, base.noise_scheduler, latents, hidden, noise, timesteps)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    print(f"{optimizer}: loss {losses[0]:.4f} -> {losses[-1]:.4f} in 30 steps")
    assert losses[-1] <= 0.75 * losses[0], losses
    if optimizer == "adamw8bit":
        states = [opt.state[p] for g in groups for p in g["params"]]
        assert type(opt).__module__.startswith("bitsandbytes")
        assert all(s["state1"].dtype == torch.uint8 for s in states)  # 8-bit state really used


def test_v_prediction_target_is_the_velocity(tiny_sd2v):
    cfg = _config(tiny_sd2v)
    base = load_base_model(cfg.model)
    scheduler = base.noise_scheduler
    assert scheduler.config.prediction_type == "v_prediction"
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    timesteps = torch.tensor([10, 900])
    alpha_bar = scheduler.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    expected = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * latents  # v = sqrt(a) eps - sqrt(1-a) x0
    assert torch.allclose(diffusion_target(scheduler, latents, noise, timesteps), expected, atol=1e-6)
    # And the loss really regresses the UNet output on v, not on the noise.
    hidden = torch.randn(2, 77, 32, generator=g)
    loss, per_example = diffusion_loss(base.unet, scheduler, latents, hidden, noise, timesteps)
    with torch.no_grad():
        prediction = base.unet(scheduler.add_noise(latents, noise, timesteps), timesteps, hidden).sample
    manual = ((prediction - expected) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(per_example.detach(), manual, atol=1e-6)


def test_min_snr_weights_match_the_formula(tiny_sd15):
    from sdlora.train.step import min_snr_weights

    base = load_base_model(_config(tiny_sd15).model)
    timesteps = torch.tensor([0, 200, 999])
    alpha_bar = base.noise_scheduler.alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    expected = torch.clamp(snr, max=5.0) / snr
    assert torch.allclose(min_snr_weights(base.noise_scheduler, timesteps, 5.0), expected, rtol=1e-5)
    assert expected[0] < 0.01 and expected[2] == pytest.approx(1.0)  # low-noise steps are down-weighted


@pytest.mark.parametrize(
    "images, batch, accum, epochs, max_steps, total, per_epoch",
    [(8, 2, 1, 5, 0, 20, 4.0), (10, 4, 1, 2, 0, 6, 3.0), (8, 2, 3, 3, 0, 4, 4 / 3), (8, 1, 1, 1, 50, 50, 8.0)],
)
def test_step_math(images, batch, accum, epochs, max_steps, total, per_epoch):
    cfg = load_config(None, [f"train.batch_size={batch}", f"train.gradient_accumulation={accum}",
                             f"train.epochs={epochs}", f"train.max_steps={max_steps}"])
    plan = plan_steps(images, cfg.train)
    assert (plan.total_steps, plan.steps_per_epoch) == (total, pytest.approx(per_epoch))
