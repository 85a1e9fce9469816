"""Metadata per family, sshs hash, malformed files, failing checks, CLI and the trainer's checked save."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch
from tests.export_fixtures import pipeline_with_lora, text_encoders
from safetensors.torch import load_file, save_file

from sdlora.cli import main
from sdlora.errors import LoraFileError
from sdlora.export.adapter import adapter_from_models
from sdlora.export.check import check_lora_file
from sdlora.export.io import read_lora_file, write_lora_file
from sdlora.export.metadata import REQUIRED_KEYS, TrainingInfo, build_metadata
from sdlora.export.shapes import shape_of_models

EXPECTED = {
    "sd15": ("sd_v1", "False", "stable-diffusion-v1/lora", "epsilon"),
    "sd2-v": ("sd_v2_v", "True", "stable-diffusion-v2-768-v/lora", "v"),
    "sdxl": ("sdxl_base_v1-0", "False", "stable-diffusion-xl-v1-base/lora", "epsilon"),
}


def _export(tmp_path, family, targets="attn", layout="kohya", info=None):
    pipe = pipeline_with_lora(family, targets, rank=4, alpha=2.0)
    tes = text_encoders(pipe, family)
    adapter = adapter_from_models(family, unet=pipe.unet, **tes)
    adapter.metadata = build_metadata(adapter, info or TrainingInfo())
    shape = shape_of_models(family, unet=pipe.unet, **tes)
    return write_lora_file(adapter, tmp_path / f"{family}.safetensors", layout, "fp32", shape), shape


def _metadata(path):
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n])["__metadata__"], raw[8 + n :]


@pytest.mark.parametrize("family", EXPECTED)
def test_metadata_per_family(tmp_path, family):
    info = TrainingInfo(output_name="mychar", base_model_name="base.safetensors", resolution=768, steps=120,
                        epoch=3, started_at=1700000000.0, tag_frequency={"img": {"cat": 3}}, num_images=4,
                        trigger_words=["mychar", "red hat"])
    path, _ = _export(tmp_path, family, "ff-conv", info=info)
    meta, tensor_bytes = _metadata(path)
    assert set(REQUIRED_KEYS) <= set(meta)
    version, v2, arch, prediction = EXPECTED[family]
    assert (meta["ss_base_model_version"], meta["ss_v2"], meta["modelspec.architecture"],
            meta["modelspec.prediction_type"]) == EXPECTED[family]
    assert meta["modelspec.sai_model_spec"] == "1.0.1"
    assert meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "2")
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "2.0"}
    assert (meta["ss_output_name"], meta["modelspec.title"]) == ("mychar", "mychar")
    assert meta["ss_sd_model_name"] == "base.safetensors"
    assert (meta["ss_resolution"], meta["modelspec.resolution"]) == ("(768, 768)", "768x768")
    assert (meta["ss_steps"], meta["ss_epoch"]) == ("120", "3")
    assert meta["ss_training_started_at"] == "1700000000.0"
    assert json.loads(meta["ss_tag_frequency"]) == {"img": {"cat": 3}}
    assert meta["modelspec.trigger_phrase"] == "mychar, red hat"
    assert meta["sshs_model_hash"] == hashlib.sha256(tensor_bytes).hexdigest()
    assert all(isinstance(v, str) for v in meta.values())


def test_check_catches_wrong_hash_and_family(tmp_path):
    path, shape = _export(tmp_path, "sd15")
    tensors = load_file(path)
    meta, _ = _metadata(path)
    save_file(tensors, tmp_path / "bad.safetensors", {**meta, "sshs_model_hash": "0" * 64, "ss_v2": "True"})
    report = check_lora_file(tmp_path / "bad.safetensors", shape)
    assert not report.ok
    text = report.text()
    assert "sshs_model_hash does not match" in text and "ss_v2" in text


def test_check_catches_keys_loaders_drop(tmp_path):
    path, shape = _export(tmp_path, "sd2-v")
    tensors, (meta, _) = load_file(path), _metadata(path)
    no_out = {k: v for k, v in tensors.items() if "layers_0_self_attn_out_proj" not in k}
    save_file(no_out, tmp_path / "no_out.safetensors", meta)
    report = check_lora_file(tmp_path / "no_out.safetensors", shape)
    assert not report.ok and "has only k/q/v" in report.text()  # A1111 skips q/k/v without out
    only_q = {k: v for k, v in tensors.items() if "lora_te_" not in k or "q_proj" in k}
    save_file(only_q, tmp_path / "only_q.safetensors", meta)
    report = check_lora_file(tmp_path / "only_q.safetensors", shape)
    assert not report.results[0].ok  # diffusers cannot load text-encoder q_proj without out_proj
    assert "resblocks_0_attn has only q" in report.text()  # A1111 also skips q without k/v/out


def test_malformed_files_give_clear_errors(tmp_path, capsys):
    path, _ = _export(tmp_path, "sd15")
    data = path.read_bytes()
    cases = {
        "truncated": data[: len(data) // 2],
        "tiny": data[:5],
        "header": b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"\0" * 32,
    }
    for name, blob in cases.items():
        (tmp_path / f"{name}.safetensors").write_bytes(blob)
    save_file({"model.weight": torch.zeros(2, 2)}, tmp_path / "notlora.safetensors")
    tensors = load_file(path)
    tensors["unet.down_blocks.0.attentions.0.proj_in.lora_A.weight"] = torch.zeros(4, 32)
    save_file(tensors, tmp_path / "mixed.safetensors")
    messages = {
        "truncated": "damaged or truncated", "tiny": "truncated", "header": "no safetensors JSON header",
        "notlora": "not a LoRA file", "mixed": "mixed key layouts",
    }
    for name, expected in messages.items():
        with pytest.raises(LoraFileError, match=expected):
            read_lora_file(tmp_path / f"{name}.safetensors")
        assert main(["check", str(tmp_path / f"{name}.safetensors")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err


def test_cli_export_and_check(tmp_path, capsys):
    path, _ = _export(tmp_path, "sdxl", "ff-conv", layout="diffusers")
    out = tmp_path / "k.safetensors"
    code = main(["export", str(path), "--format", "kohya", "--dtype", "fp16", "-o", str(out), "--base", "builtin:tiny-sdxl"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "180/180 layers loaded" in text and "180/180 layers matched" in text
    assert all(v.dtype == torch.float16 for v in load_file(out).values())
    assert main(["check", str(out), "--base", "builtin:tiny-sdxl"]) == 0
    assert main(["check", str(out)]) == 1  # tiny shapes do not fit real SDXL: reported, exit 1


def test_trainer_saves_checked_kohya_file(tmp_path):
    from sdlora.config import load_config
    from sdlora.train.run import run_training

    cfg = load_config(None, ["model.path=builtin:tiny-sd15", "data.path=builtin:demo-shapes", "data.resolution=64",
                             "train.max_steps=2", "optim.optimizer=adamw", "lora.rank=4", "lora.alpha=4",
                             "lora.unet_targets=attn-ff-conv", "lora.train_text_encoder=true",
                             "save.trigger_words=['shp']", "save.output_name=shapes"], None)
    path = run_training(cfg, tmp_path / "run", progress=False)
    keys = load_file(path)
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
    meta, _ = _metadata(path)
    assert (meta["ss_steps"], meta["ss_output_name"], meta["modelspec.trigger_phrase"]) == ("2", "shapes", "shp")
    from collections import Counter

    from sdlora.demo.shapes import DEMO_DATASETS

    captions = Counter(scene.caption for scene in DEMO_DATASETS["demo-shapes"])  # one tag each: no commas
    assert json.loads(meta["ss_tag_frequency"]) == {"demo-shapes": dict(captions)}
    assert json.loads(meta["ss_dataset_dirs"]) == {"demo-shapes": {"n_repeats": 1, "img_count": 8}}
    assert read_lora_file(path).family == "sd15"
