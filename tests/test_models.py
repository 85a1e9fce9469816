"""Offline tokenizer, tiny model factory, family detection and clear loading errors."""
from __future__ import annotations

import json
import shutil

import pytest

from sdlora.config.schema import ModelSection
from sdlora.errors import ModelError
from sdlora.models.family import detect_family
from sdlora.models.loading import load_base_model, resolve_model_path
from sdlora.models.tokenizer import clip_tokenizer


def test_offline_clip_tokenizer_gives_the_known_ids():
    tokenizer = clip_tokenizer()
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    padded = tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == 49407
    assert clip_tokenizer(pad_token="!").pad_token_id == 0  # SD2 / OpenCLIP padding


def test_tiny_models_have_the_right_family(tiny_sd15, tiny_sd2v, tmp_path):
    from sdlora.models.tiny import save_tiny_model

    assert detect_family(tiny_sd15) == "sd15"
    assert detect_family(tiny_sd2v) == "sd2-v"
    assert detect_family(save_tiny_model(tmp_path / "xl", "sdxl")) == "sdxl"


def test_tiny_model_is_deterministic_by_seed(tmp_path):
    import torch

    from sdlora.models.tiny import build_tiny_pipeline

    a, b, c = (build_tiny_pipeline("sd15", seed).unet for seed in (3, 3, 4))
    for (name, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))


def test_load_folder_gives_components_family_and_prediction_type(tiny_sd15, tiny_sd2v):
    base = load_base_model(ModelSection(path=str(tiny_sd15)))
    assert (base.family, base.prediction_type, base.vae_scale_factor) == ("sd15", "epsilon", 8)
    v = load_base_model(ModelSection(path=str(tiny_sd2v)))
    assert (v.family, v.noise_scheduler.config.prediction_type) == ("sd2-v", "v_prediction")
    forced = load_base_model(ModelSection(path=str(tiny_sd15), prediction_type="v_prediction"))
    assert forced.noise_scheduler.config.prediction_type == "v_prediction"


def test_sd2_epsilon_is_told_apart_from_v(tiny_sd2v, tmp_path):
    copy = shutil.copytree(tiny_sd2v, tmp_path / "sd2")
    config_path = copy / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = "epsilon"
    config_path.write_text(json.dumps(config))
    assert detect_family(copy) == "sd2"


@pytest.mark.parametrize(
    "path, message",
    [
        ("", "model.path is empty"),
        ("/no/such/model", "Model path not found: /no/such/model"),
        ("someone/some-model", "not in the local cache and HF_HUB_OFFLINE is set"),
        ("builtin:tiny-sd99", "Unknown built-in model 'builtin:tiny-sd99'"),
    ],
)
def test_model_path_errors_say_what_to_do(path, message):
    with pytest.raises(ModelError) as info:
        resolve_model_path(path)
    assert message in str(info.value)
    if path and not path.startswith("builtin"):
        assert "local" in str(info.value) or "diffusers folder" in str(info.value)


def test_folder_that_is_not_a_model_and_single_file(tmp_path):
    with pytest.raises(ModelError, match="not a diffusers model"):
        resolve_model_path(str(tmp_path))
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"x")
    assert resolve_model_path(str(single)) == single  # single files are read (tests/test_single_file.py)
    with pytest.raises(ModelError, match="not a readable .safetensors file"):
        load_base_model(ModelSection(path=str(single)))


def test_sdxl_loads_with_both_text_encoders(tmp_path):
    from sdlora.models.tiny import save_tiny_model

    folder = save_tiny_model(tmp_path / "xl", "sdxl")
    base = load_base_model(ModelSection(path=str(folder)))
    assert base.family == "sdxl" and len(base.text_encoders) == len(base.tokenizers) == 2
    assert type(base.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert base.tokenizer_2.pad_token == "!"  # OpenCLIP pads with '!', CLIP-L with <|endoftext|>


@pytest.mark.slow
def test_full_size_sd15_unet_has_the_known_parameter_count():
    from sdlora.models.tiny import build_full_sd15_unet

    unet = build_full_sd15_unet()
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
