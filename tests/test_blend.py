"""Blend math on real files: concat is the exact weighted sum, SVD reproduces it at full rank and
reports the true error below it; block weights, family checks, metadata, the CLI."""
from __future__ import annotations

import json

import pytest
import torch

from sdlora.blend import BlendError
from sdlora.blend.blocks import block_of, parse_block_weights
from sdlora.blend.files import write_blend_file
from sdlora.blend.merge import blend
from sdlora.blend.sources import parse_source_spec, read_blend_inputs
from sdlora.export.io import read_lora_file
from sdlora.export.shapes import standard_shape
from tests.blend_fixtures import LORAS, delta, expected_deltas, write_loras

WEIGHTS = {"a": 0.7, "b": -0.3, "c": 0.5}


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    """family -> ({name: path}, shape); A attn r4, B ff+conv r8, C attn r2."""
    folder = tmp_path_factory.mktemp("loras")
    return {family: write_loras(folder, family) for family in ("sd15", "sdxl")}


def _inputs(loras, family, weights=WEIGHTS):
    paths, shape = loras[family]
    return read_blend_inputs([f"{paths[n]}:{w}" for n, w in weights.items()], shape), shape


def _max_delta_diff(adapter, expected) -> float:
    assert set(adapter.modules) == set(expected)
    return max((delta(m) - expected[n]).abs().max().item() for n, m in adapter.modules.items())


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_concat_file_is_the_exact_weighted_sum(loras, tmp_path, family):
    inputs, shape = _inputs(loras, family)
    expected = expected_deltas([(i.adapter, i.weight) for i in inputs])
    path = tmp_path / "blend.safetensors"
    report = write_blend_file(blend(inputs, "concat", shape=shape), inputs, path, shape, dtype="fp32")
    assert report.ok, report.text()
    back = read_lora_file(path, shape=shape)
    diff = _max_delta_diff(back, expected)
    size = max(t.abs().max().item() for t in expected.values())
    print(f"{family} concat: {len(back.modules)} layers, max |dW - sum w dW_i| {diff:.2e} (|dW| up to {size:.2f})")
    assert diff <= 1e-6 and size > 0.1
    ranks = {n: m.rank for n, m in back.modules.items()}
    only_b = [n for n in back.modules if n not in inputs[0].adapter.modules]
    assert only_b and all(ranks[n] == LORAS["b"][1] for n in only_b)  # a layer only B has still works
    assert {ranks[n] for n in inputs[0].adapter.modules} == {4 + 8 + 2}  # A's layers are in B and C too


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_svd_at_full_rank_reproduces_concat(loras, family):
    inputs, shape = _inputs(loras, family)
    concat = blend(inputs, "concat", shape=shape).adapter
    expected = {n: delta(m) for n, m in concat.modules.items()}
    result = blend(inputs, "svd", rank=14, shape=shape)  # 14 = 4 + 8 + 2, the sum of ranks
    diff = _max_delta_diff(result.adapter, expected)
    print(f"{family} svd r14 vs concat: max diff {diff:.2e}, reported error {result.relative_error:.1e}")
    assert diff <= 1e-5
    assert result.relative_error < 1e-6 and result.retained_energy > 1 - 1e-6


def test_svd_below_full_rank_reports_the_true_error(loras):
    """Reported errors vs an independent dense computation: the actual ||M - dW_file|| / ||M|| and
    the Eckart-Young optimum from M's singular values."""
    inputs, shape = _inputs(loras, "sd15")
    expected = expected_deltas([(i.adapter, i.weight) for i in inputs])
    result = blend(inputs, "svd", rank=3, conv_rank=2, shape=shape)
    worst, total, lost = 0.0, 0.0, 0.0
    for layer in result.layers:
        m = expected[layer.name]
        actual = (torch.linalg.norm(m - delta(result.adapter.modules[layer.name])) / torch.linalg.norm(m)).item()
        s = torch.linalg.svdvals(m)
        optimal = (s[layer.rank:].square().sum() / s.square().sum()).sqrt().item()
        worst = max(worst, abs(actual - layer.relative_error), abs(optimal - layer.relative_error))
        assert abs(layer.retained_energy - (1 - optimal**2)) < 1e-9
        total, lost = total + s.square().sum().item(), lost + s[layer.rank:].square().sum().item()
        is_3x3 = result.adapter.modules[layer.name].down.dim() == 4 and result.adapter.modules[layer.name].down.shape[-1] == 3
        assert layer.rank == (2 if is_3x3 else 3)
    overall = (lost / total) ** 0.5
    print(f"svd r3/conv2: overall error {result.relative_error:.4f} (independent {overall:.4f}), "
          f"retained {result.retained_energy:.4f}; worst per-layer mismatch {worst:.1e}")
    assert worst < 1e-6
    assert abs(result.relative_error - overall) < 1e-9 and 0.05 < overall < 0.95


def test_block_names_follow_a1111():
    sd15, sdxl = standard_shape("sd15"), standard_shape("sdxl")
    attn = ".transformer_blocks.0.attn1.to_q"
    assert block_of("unet.down_blocks.0.attentions.0" + attn, sd15) == "IN01"
    assert block_of("unet.down_blocks.2.attentions.1" + attn, sd15) == "IN08"
    assert block_of("unet.mid_block.attentions.0" + attn, sd15) == "MID"
    assert block_of("unet.up_blocks.1.attentions.0" + attn, sd15) == "OUT03"
    assert block_of("unet.up_blocks.3.attentions.2" + attn, sd15) == "OUT11"
    assert block_of("unet.down_blocks.1.resnets.0.conv1", sd15) == "IN04"
    assert block_of("text_encoder.encoder.layers.0.self_attn.q_proj", sd15) == "BASE"
    assert block_of("unet.time_embedding.linear_1", sd15) is None
    assert block_of("unet.down_blocks.1.attentions.0" + attn, sdxl) == "IN04"
    assert block_of("unet.down_blocks.2.attentions.1" + attn, sdxl) == "IN08"
    assert block_of("unet.up_blocks.0.attentions.2" + attn, sdxl) == "OUT02"
    assert block_of("unet.up_blocks.1.attentions.2" + attn, sdxl) == "OUT05"
    assert block_of("text_encoder_2.encoder.layers.3.mlp.fc1", sdxl) == "BASE"
    assert len(parse_block_weights(",".join(["1"] * 17), "sd15")) == 17
    assert len(parse_block_weights(",".join(["1"] * 20), "sdxl")) == 20
    with pytest.raises(BlendError, match="12 or 20"):
        parse_block_weights(",".join(["1"] * 17), "sdxl")


def test_block_weights_scale_each_block(loras):
    """SD1 17-vector: BASE 0, IN 0.5, MID 2, OUT 1 (tiny SD1.5: IN01/IN02 attention, OUT03-05)."""
    paths, shape = loras["sd15"]
    vector = "0," + ",".join(["0.5"] * 6) + ",2," + ",".join(["1"] * 9)
    inputs = read_blend_inputs([f"{paths['a']}:0.8:{vector}"], shape)
    result = blend(inputs, "concat", shape=shape).adapter
    source = inputs[0].adapter.modules
    seen = set()
    for name, module in source.items():
        block = block_of(name, shape)
        factor = {"BASE": 0.0, "MID": 2.0}.get(block, 0.5 if block.startswith("IN") else 1.0)
        seen.add(block)
        if factor == 0.0:
            assert name not in result.modules  # weight 0: the layer is left out
        else:
            assert torch.allclose(delta(result.modules[name]), 0.8 * factor * delta(module), atol=1e-7)
    assert {"BASE", "IN01", "IN02", "MID", "OUT03", "OUT05"} <= seen


def test_source_specs_and_family_errors(loras, tmp_path):
    spec = parse_source_spec("C:/loras/my:lora.safetensors:-0.25")
    assert (str(spec.path), spec.weight, spec.blocks_text) == ("C:/loras/my:lora.safetensors", -0.25, None)
    spec = parse_source_spec("a.safetensors:1:1,0,1")
    assert (str(spec.path), spec.weight, spec.blocks_text) == ("a.safetensors", 1.0, "1,0,1")
    for bad in ("a.safetensors", "a.safetensors:x", ":0.5", "a.safetensors:nan"):
        with pytest.raises(BlendError):
            parse_source_spec(bad)
    sdxl_diffusers, _ = write_loras(tmp_path, "sdxl", names=("c",), layout="diffusers")
    with pytest.raises(BlendError, match="different model families.*sd15.*sdxl"):
        read_blend_inputs([f"{loras['sd15'][0]['a']}:1", f"{sdxl_diffusers['c']}:1"])


def test_blend_metadata_names_sources_weights_method(loras, tmp_path):
    inputs, shape = _inputs(loras, "sdxl")
    path = tmp_path / "mix.safetensors"
    report = write_blend_file(blend(inputs, "svd", rank=4, shape=shape), inputs, path, shape, rank=4)
    assert report.ok, report.text()
    meta = read_lora_file(path, shape=shape).metadata
    sources = json.loads(meta["sdlora_blend_sources"])
    assert [(s["file"], s["weight"]) for s in sources] == [(f"sdxl-{n}.safetensors", w) for n, w in WEIGHTS.items()]
    assert all(len(s["sshs_model_hash"]) == 64 for s in sources)
    method = json.loads(meta["sdlora_blend_method"])
    assert method["method"] == "svd" and method["rank"] == 4 and 0 < method["relative_error"] < 1
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_network_dim"] == "4"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert json.loads(meta["ss_trigger_words"]) == ["triga", "trigb", "trigc"]
    with pytest.raises(BlendError, match="already exists"):
        write_blend_file(blend(inputs, "concat", shape=shape), inputs, path, shape)


def test_cli_blend_writes_checked_file_and_reports(loras, tmp_path, tiny_sd15, capsys):
    from sdlora.cli import main

    paths, _ = loras["sd15"]
    out = tmp_path / "cli.safetensors"
    code = main(["blend", f"{paths['a']}:0.7", f"{paths['b']}:0.3", "--method", "svd", "--rank", "6",
                 "--base", "builtin:tiny-sd15", "--dtype", "fp32", "-o", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "svd blend: 108 layers, rank 6, relative Frobenius error" in printed and "PASS" in printed
    assert main(["blend", f"{paths['a']}:0.7", "-o", str(tmp_path / "x.safetensors"), "--rank", "4"]) == 2
    assert "--method svd only" in capsys.readouterr().err
    assert main(["blend", f"{paths['a']}:0.7", "--method", "svd", "-o", str(tmp_path / "y.safetensors")]) == 2
    assert "needs --rank" in capsys.readouterr().err
