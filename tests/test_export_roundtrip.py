"""Export -> diffusers load_lora_weights gives the same model as sdlora's in-memory LoRA;
import(export(x)) == x; the compatibility check passes on every family, layout and target set."""
from __future__ import annotations

import pytest
from tests.export_fixtures import max_output_diff, outputs, pipeline_with_lora, text_encoders

from sdlora.export.adapter import adapter_from_models, load_into_models, max_difference
from sdlora.export.check import check_lora_file
from sdlora.export.io import read_lora_file, write_lora_file
from sdlora.export.metadata import TrainingInfo, build_metadata
from sdlora.export.shapes import shape_of_models
from sdlora.models.tiny import build_tiny_pipeline

FAMILIES = ("sd15", "sd2-v", "sdxl")
CASES = [(f, t) for f in FAMILIES for t in ("attn", "ff-conv")]


@pytest.fixture(scope="module")
def trained(request):
    """(family, targets) -> (adapter, shape, outputs with LoRA, outputs of the base)."""
    cache = {}

    def get(family, targets):
        if (family, targets) not in cache:
            pipe = pipeline_with_lora(family, targets)
            tes = text_encoders(pipe, family)
            adapter = adapter_from_models(family, unet=pipe.unet, **tes)
            adapter.metadata = build_metadata(adapter, TrainingInfo(output_name=f"{family}-{targets}"))
            shape = shape_of_models(family, unet=pipe.unet, **tes)
            base = outputs(build_tiny_pipeline(family, seed=0), family)
            cache[family, targets] = (adapter, shape, outputs(pipe, family), base)
        return cache[family, targets]

    return get


# The diffusers-layout half runs with -m slow (the whole grid takes ~2.5 min on 2 cores).
@pytest.mark.parametrize("layout", ["kohya", pytest.param("diffusers", marks=pytest.mark.slow)])
@pytest.mark.parametrize("family,targets", CASES)
def test_diffusers_loads_export_exactly(trained, tmp_path, family, targets, layout):
    adapter, shape, with_lora, base = trained(family, targets)
    path = write_lora_file(adapter, tmp_path / "lora.safetensors", layout, "fp32", shape)
    pipe = build_tiny_pipeline(family, seed=0)
    pipe.load_lora_weights(str(path))
    loaded = outputs(pipe, family)
    diff, effect = max_output_diff(loaded, with_lora), max_output_diff(base, with_lora)
    print(f"{family} {targets} {layout}: {len(adapter.modules)} layers, max|diff| {diff:.2e}, effect {effect:.3f}")
    assert diff <= 1e-5
    assert effect > 0.1  # the LoRA really changes every tested output ...
    assert min((base[k] - with_lora[k]).abs().max().item() for k in base) > 1e-3  # ... of each component
    report = check_lora_file(path, shape)
    assert report.ok, report.text()


@pytest.mark.parametrize("layout", ["kohya", "diffusers"])
@pytest.mark.parametrize("family,targets", CASES)
def test_import_of_export_is_identity(trained, tmp_path, family, targets, layout):
    adapter, shape, _, _ = trained(family, targets)
    path = write_lora_file(adapter, tmp_path / "lora.safetensors", layout, "fp32", shape)
    back = read_lora_file(path, shape=shape)
    assert back.family == family
    assert len(back.modules) == len(adapter.modules)
    assert max_difference(adapter, back) == 0.0


def test_import_detects_family_from_metadata_and_keys(trained, tmp_path):
    adapter, shape, _, _ = trained("sdxl", "attn")
    path = write_lora_file(adapter, tmp_path / "lora.safetensors", "diffusers", "fp32", shape)
    assert read_lora_file(path).family == "sdxl"  # metadata
    from safetensors.torch import load_file, save_file

    save_file(load_file(path), tmp_path / "bare.safetensors")  # no metadata: text_encoder_2 keys say SDXL
    assert read_lora_file(tmp_path / "bare.safetensors").family == "sdxl"


def test_import_reads_peft_base_model_keys(trained, tmp_path):
    from safetensors.torch import save_file

    adapter, shape, _, _ = trained("sd15", "ff-conv")
    unet_only = {k: v for k, v in adapter.modules.items() if k.startswith("unet.")}
    tensors = {}
    for name, m in unet_only.items():
        path = name.removeprefix("unet.")
        tensors[f"base_model.model.{path}.lora_A.weight"] = m.down
        tensors[f"base_model.model.{path}.lora_B.weight"] = m.up
    save_file(tensors, tmp_path / "peft.safetensors")
    back = read_lora_file(tmp_path / "peft.safetensors", family="sd15")
    assert set(back.modules) == set(unet_only)
    assert all(m.alpha == m.rank for m in back.modules.values())  # PEFT without config: scale 1


@pytest.mark.parametrize("dtype,tolerance", [("fp16", 2e-3), ("bf16", 2e-2)])
def test_half_precision_export(trained, tmp_path, dtype, tolerance):
    from safetensors import safe_open

    adapter, shape, _, _ = trained("sdxl", "ff-conv")
    path = write_lora_file(adapter, tmp_path / "lora.safetensors", "kohya", dtype, shape)
    with safe_open(path, "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F16" if dtype == "fp16" else "BF16"}
    assert max_difference(adapter, read_lora_file(path, shape=shape)) < tolerance
    assert check_lora_file(path, shape).ok


def test_loaded_import_reproduces_model(trained, tmp_path):
    """read -> load_into_models (continue training / blending) gives the same outputs."""
    adapter, shape, with_lora, _ = trained("sdxl", "ff-conv")
    path = write_lora_file(adapter, tmp_path / "lora.safetensors", "kohya", "fp32", shape)
    pipe = build_tiny_pipeline("sdxl", seed=0)
    load_into_models(read_lora_file(path, shape=shape), unet=pipe.unet, **text_encoders(pipe, "sdxl"))
    assert max_output_diff(outputs(pipe, "sdxl"), with_lora) <= 1e-5


def test_kohya_keys_follow_community_names(trained, tmp_path):
    from safetensors import safe_open

    keys = {}
    for family in FAMILIES:
        adapter, shape, _, _ = trained(family, "ff-conv")
        path = write_lora_file(adapter, tmp_path / f"{family}.safetensors", "kohya", "fp32", shape)
        with safe_open(path, "pt") as f:
            keys[family] = set(f.keys())
            assert all(f.get_tensor(k).is_contiguous() for k in f.keys())
            assert all(f.get_tensor(k).dim() == 0 for k in f.keys() if k.endswith(".alpha"))
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys["sd15"]
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha" in keys["sd15"]
    assert "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight" in keys["sd15"]
    sdxl = keys["sdxl"]
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight" in sdxl
    assert "lora_unet_middle_block_1_proj_in.alpha" in sdxl
    assert "lora_unet_output_blocks_0_1_proj_out.alpha" in sdxl
    assert "lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight" in sdxl  # resnet conv1, LDM name
    assert "lora_te2_text_model_encoder_layers_1_mlp_fc2.alpha" in sdxl
    assert any(k.startswith("lora_te1_text_model_") for k in sdxl)
    assert not any("down_blocks" in k or "mid_block" in k or "up_blocks" in k for k in sdxl)
    assert len(keys["sd15"]) == 3 * 108 and len(sdxl) == 3 * 180
