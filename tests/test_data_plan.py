"""The dry-run plan: step math with repeats/batch/accumulation, buckets, captions, tags, LR, memory."""
import json

import pytest

from sdlora.cli import main
from sdlora.config import from_dict
from sdlora.data.plan import format_plan, make_plan
from tests.data_helpers import gradient, write_image


def make_two_datasets(root):
    for i in range(4):
        write_image(root / "a" / "5_char", f"{i}.png", gradient((64, 64), i), caption=f"sks, red, shape{i}")
    for i in range(2):
        write_image(root / "b", f"{i}.png", gradient((128, 64), i), caption="wide, red")
    write_image(root / "b", "nocap.png", gradient((128, 64), 9))


def plan_config(root, model="builtin:tiny-sd15", **train):
    return from_dict({
        "model": {"path": model},
        "data": {"resolution": 64, "bucket_step": 32, "datasets": [
            {"path": str(root / "a")},
            {"path": str(root / "b"), "repeats": 2, "missing_caption": "default", "default_caption": "wide, blue"},
        ]},
        "lora": {"rank": 4},
        "optim": {"lr_scheduler": "cosine", "lr_warmup_steps": 4, "learning_rate": 1e-3},
        "train": {"batch_size": 2, "gradient_accumulation": 2, "epochs": 3, **train},
    })


def test_plan_numbers(tmp_path):
    make_two_datasets(tmp_path)
    plan = make_plan(plan_config(tmp_path))
    assert [(d["images"], d["samples_per_epoch"]) for d in plan.datasets] == [(4, 20), (3, 6)]
    assert (plan.num_images, plan.samples_per_epoch) == (7, 26)
    # 20 samples in 64x64 -> 10 batches, 6 in 96x32 -> 3 batches; 13 / accumulation 2 = 6.5 steps/epoch
    assert (plan.batches_per_epoch, plan.steps_per_epoch, plan.epochs, plan.total_steps) == (13, 6.5, 3, 20)
    assert plan.buckets == [[64, 64, 4], [96, 32, 3]]
    assert plan.caption_sources == {"default": 1, "file": 6}
    assert plan.top_tags[:3] == [["red", 6], ["sks", 4], ["wide", 3]]
    steps = [s for s, _ in plan.lr_curve]
    assert steps == [0, 4, 5, 10, 14, 19]
    lrs = dict((s, lr) for s, lr in plan.lr_curve)
    assert lrs[0] == 0.0 and lrs[4] == pytest.approx(1e-3) and lrs[19] < 2e-5
    text = format_plan(plan)
    assert "26 samples/epoch; 13 batches of <= 2 (buckets never mix) / accumulation 2 = 6.5 steps/epoch x 3 epochs = 20 steps" in text


def test_max_steps_and_memory_counts_real_lora_params(tmp_path):
    from sdlora.lora.inject import add_lora, count_parameters
    from sdlora.models.loading import load_base_model

    make_two_datasets(tmp_path)
    cfg = plan_config(tmp_path, max_steps=50)
    plan = make_plan(cfg)
    assert (plan.total_steps, plan.epochs) == (50, 8)  # ceil(50 / 6.5)
    base = load_base_model(cfg.model)
    add_lora(base, cfg.lora)
    assert plan.memory["lora_params"] == count_parameters(base.unet, base.text_encoder).trainable
    weights = sum(p.numel() for m in (base.unet, base.vae, base.text_encoder) for p in m.parameters()) - plan.memory["lora_params"]
    assert plan.memory["frozen_weights"] == weights * 4
    assert plan.memory["total"] > plan.memory["frozen_weights"]
    assert plan.memory["total"] == sum(size for _, size in plan.memory["parts"])


def test_plan_needs_no_model_and_cli_json(tmp_path, capsys):
    make_two_datasets(tmp_path)
    plan = make_plan(plan_config(tmp_path, model=str(tmp_path / "missing")))
    assert plan.memory is None and "memory estimate unavailable" in plan.memory_note
    (tmp_path / "cfg.toml").write_text(f'[data]\npath = "{tmp_path / "a"}"\nresolution = 64\n[train]\nepochs = 2\n')
    assert main(["plan", str(tmp_path / "cfg.toml"), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["samples_per_epoch"], shown["total_steps"]) == (20, 40)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.toml").write_text(f'[data]\npath = "{tmp_path / "empty"}"\n[train]\nmax_steps = 5\n')
    assert main(["plan", str(tmp_path / "empty.toml")]) == 2
    assert "error: No usable images in" in capsys.readouterr().err
