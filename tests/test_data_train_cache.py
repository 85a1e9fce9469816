"""Acceptance: training with latent + text caches equals training without them (same seed,
deterministic latents, caption shuffle and dropout on), CPU fp32."""
import pytest
from safetensors.torch import load_file

from sdlora.config import from_dict
from sdlora.train.run import run_training
from tests.data_helpers import gradient, write_image


def make_data(folder):
    captions = ["sks, red, circle, plain", "sks, blue, square, grass", "sks, green, ring", "sks, wide, red, tree"]
    sizes = [(64, 64), (64, 64), (80, 64), (128, 64)]
    for i, (caption, size) in enumerate(zip(captions, sizes)):
        write_image(folder, f"{i}.png", gradient(size, i), caption=caption)


def train(tmp_path, name, latents, **data):
    cfg = from_dict({
        "model": {"path": "builtin:tiny-sd15"},
        "data": {"path": str(tmp_path / "data"), "resolution": 64, "bucket_step": 32, "latents": latents,
                 "shuffle_tags": True, "keep_tokens": 1, "caption_dropout_rate": 0.2, "tag_dropout_rate": 0.2,
                 "random_flip": True, **data},
        "lora": {"rank": 4, "alpha": 4.0},
        "optim": {"optimizer": "adamw", "learning_rate": 1e-2},
        "train": {"max_steps": 8, "batch_size": 2, "seed": 5, "device": "cpu"},
        "save": {"output_name": name},
    })
    events = []
    path = run_training(cfg, tmp_path / name, progress=False, extra_sink=events.append)
    return load_file(path), events


@pytest.mark.parametrize("latents, cache", [
    ("deterministic", "memory"),
    pytest.param("sample", "disk", marks=pytest.mark.slow),
])
def test_cached_training_equals_uncached(tmp_path, latents, cache):
    make_data(tmp_path / "data")
    plain, _ = train(tmp_path, "plain", latents)
    cached, events = train(tmp_path, "cached", latents, cache_latents=cache, cache_dir=str(tmp_path / "cache"),
                           cache_text_embeddings=True)
    assert plain.keys() == cached.keys() and len(plain) == 144  # 48 attention layers x (down, up, alpha)
    diff = max((plain[k] - cached[k]).abs().max().item() for k in plain)
    assert diff <= 1e-5  # the acceptance bound
    assert diff == 0.0  # what per-item encoding gives on CPU fp32: bit-identical
    started = next(e for e in events if e.type == "started")
    assert (started.total_steps, started.steps_per_epoch, started.epochs) == (8, 3, 3)  # 3 buckets -> 3 batches
    moved = max((plain[k]).abs().max().item() for k in plain if "lora_up" in k)
    assert moved > 1e-3  # the adapter really trained
