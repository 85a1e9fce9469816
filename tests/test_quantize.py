"""QLoRA-style quantized base (model.quantize): int8 / nf4 frozen layers train a LoRA on CPU, the
saved file is the usual one and works on the unquantized base, and unsupported setups say so."""
from __future__ import annotations

import time

import pytest
import torch

from sdlora.errors import ModelError
from sdlora.models.loading import load_base_model
from sdlora.train.setup import make_accelerator, prepare_model
from tests.test_lora_training import _config, _fixed_batch

STEPS = 10


def _layer_types(module) -> set[str]:
    return {f"{type(m).__module__}.{type(m).__name__}" for m in module.modules()}


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_quantized_base_trains_and_its_lora_works_on_the_plain_base(tiny_sd15, image_folder, tmp_path, kind):
    from diffusers import StableDiffusionPipeline

    from sdlora.export.training import save_checked_lora, training_info
    from sdlora.train.optim import build_optimizer
    from sdlora.train.step import diffusion_loss

    cfg = _config(tiny_sd15, f"model.quantize={kind}", "lora.rank=8", "optim.min_8bit_size=1",
                  "optim.learning_rate=1e-2", "optim.weight_decay=0.0")
    base = load_base_model(cfg.model)
    groups = prepare_model(base, cfg, make_accelerator(cfg.train))
    opt = build_optimizer(groups, cfg.optim, lambda message: None)
    latents, hidden, noise, timesteps = _fixed_batch(base, image_folder, torch.Generator().manual_seed(0))
    losses = []
    for _ in range(STEPS):
        loss, _ = diffusion_loss(base.unet, base.noise_scheduler, latents, hidden, noise, timesteps)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for g in groups for p in g["params"])
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    print(f"{kind}: loss {losses[0]:.4f} -> {losses[-1]:.4f} in {STEPS} steps")
    assert losses[-1] <= 0.8 * losses[0], losses
    assert all(opt.state[p]["state1"].dtype == torch.uint8 for g in groups for p in g["params"])  # 8-bit Adam

    path = tmp_path / f"{kind}.safetensors"  # the trainer's save, with its compatibility check
    save_checked_lora(base, path, cfg, training_info(cfg, STEPS, 1, time.time()))
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd15, safety_checker=None, requires_safety_checker=False)
    assert not any("bitsandbytes" in type(m).__module__ for m in pipe.unet.modules())  # the plain base
    g = torch.Generator().manual_seed(1)
    x, t, h = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500]), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        before = pipe.unet(x, t, h).sample
        pipe.load_lora_weights(str(path))
        after = pipe.unet(x, t, h).sample
    change = (after - before).abs().max().item()
    print(f"{kind}: adapter changes the unquantized UNet's output by max |diff| {change:.4f} "
          f"(output max {before.abs().max().item():.3f})")
    assert change > 1e-2


@pytest.mark.parametrize("kind", ["int8", "nf4"])
def test_quantized_layers_replace_every_linear(tiny_sd15, kind):
    cfg = _config(tiny_sd15, f"model.quantize={kind}", "lora.train_text_encoder=true")
    base = load_base_model(cfg.model)
    linears = sum(type(m) is torch.nn.Linear for m in base.unet.modules())
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in base.unet.modules())
    prepare_model(base, cfg, make_accelerator(cfg.train))
    names = _layer_types(base.unet) | _layer_types(base.text_encoder)
    peft_layer = {"int8": "peft.tuners.lora.bnb.Linear8bitLt", "nf4": "peft.tuners.lora.bnb.Linear4bit"}[kind]
    assert peft_layer in names  # PEFT's bnb LoRA variant wraps the quantized layers
    plain = [name for name, m in base.unet.named_modules() if type(m) is torch.nn.Linear and ".lora_" not in name]
    assert plain == []  # only LoRA's own A/B layers are plain Linear
    bnb_kind = {"int8": "Linear8bitLt", "nf4": "Linear4bit"}[kind]
    quantized = sum(type(m).__name__ == bnb_kind and type(m).__module__.startswith("bitsandbytes")
                    for m in base.unet.modules())
    assert quantized == linears > 0
    assert sum(isinstance(m, torch.nn.Conv2d) for m in base.unet.modules()) == convs  # convs stay


def test_missing_or_old_bitsandbytes_is_a_clear_error(tiny_sd15, monkeypatch):
    import importlib.metadata

    real_version = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version",
                        lambda name: "0.42.0" if name == "bitsandbytes" else real_version(name))
    cfg = _config(tiny_sd15, "model.quantize=nf4")
    base = load_base_model(cfg.model)
    with pytest.raises(ModelError, match=r"needs bitsandbytes >= 0.50 \(found 0.42.0\).*model.quantize = 'none'"):
        prepare_model(base, cfg, make_accelerator(cfg.train))


def test_a_device_bitsandbytes_cannot_run_is_a_clear_error(tiny_sd15, monkeypatch):
    import bitsandbytes as bnb

    def no_kernel(self, x):
        raise NotImplementedError("no int8 kernel for this device")

    monkeypatch.setattr(bnb.nn.Linear8bitLt, "forward", no_kernel)
    cfg = _config(tiny_sd15, "model.quantize=int8")
    base = load_base_model(cfg.model)
    with pytest.raises(ModelError, match=r"cannot run model.quantize = 'int8' on cpu .*no int8 kernel.*"
                                         r"Set model.quantize = 'none'"):
        prepare_model(base, cfg, make_accelerator(cfg.train))
