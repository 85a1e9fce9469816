"""The blend against diffusers itself: a blended file loads to the same model as set_adapters over
the inputs; a baked model equals base + adapters at those weights; the preview grid's columns."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sdlora.blend.files import write_blend_file
from sdlora.blend.merge import blend
from sdlora.blend.sources import read_blend_inputs
from sdlora.models.tiny import build_tiny_pipeline
from tests.blend_fixtures import write_loras
from tests.export_fixtures import max_output_diff, outputs

WEIGHTS = {"a": 0.7, "b": -0.3, "c": 0.5}


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    return {family: write_loras(folder, family) for family in ("sd15", "sdxl")}


def mixed_outputs(family: str, paths: dict, weights: dict = WEIGHTS):
    """Outputs of the tiny pipeline with every input loaded as an adapter, mixed by set_adapters."""
    pipe = build_tiny_pipeline(family, seed=0)
    for name in weights:
        pipe.load_lora_weights(str(paths[name]), adapter_name=name)
    pipe.set_adapters(list(weights), adapter_weights=list(weights.values()))
    return outputs(pipe, family)


def loaded_outputs(family: str, path):
    pipe = build_tiny_pipeline(family, seed=0)
    pipe.load_lora_weights(str(path))
    return outputs(pipe, family)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_concat_file_equals_set_adapters(loras, tmp_path, family):
    paths, shape = loras[family]
    inputs = read_blend_inputs([f"{paths[n]}:{w}" for n, w in WEIGHTS.items()], shape)
    path = tmp_path / "blend.safetensors"
    write_blend_file(blend(inputs, "concat", shape=shape), inputs, path, shape, dtype="fp32")
    mixed, base = mixed_outputs(family, paths), outputs(build_tiny_pipeline(family, seed=0), family)
    diff, effect = max_output_diff(loaded_outputs(family, path), mixed), max_output_diff(mixed, base)
    print(f"{family}: blended file vs set_adapters max|diff| {diff:.2e}, blend effect {effect:.3f}")
    assert diff <= 1e-5 and effect > 0.05


@pytest.mark.slow  # ~40 s on 2 busy cores; the reported error itself is checked in test_blend.py
def test_svd_file_error_shows_in_outputs(loras, tmp_path):
    """Lower rank: the output moves away from the exact mix, and more so at rank 1 than rank 6."""
    paths, shape = loras["sd15"]
    inputs = read_blend_inputs([f"{paths[n]}:{w}" for n, w in WEIGHTS.items()], shape)
    mixed = mixed_outputs("sd15", paths)
    diffs = {}
    for rank in (1, 6, 14):
        path = tmp_path / f"svd{rank}.safetensors"
        write_blend_file(blend(inputs, "svd", rank=rank, shape=shape), inputs, path, shape, dtype="fp32", rank=rank)
        diffs[rank] = max_output_diff(loaded_outputs("sd15", path), mixed)
    print("svd output max|diff| vs exact mix by rank:", {k: f"{v:.2e}" for k, v in diffs.items()})
    assert diffs[14] <= 1e-5 < diffs[6] < diffs[1]


def test_bake_equals_base_plus_adapters(loras, tmp_path, capsys):
    """Through the CLI: `sdlora bake BASE A:w B:w C:w -o OUT` == base + set_adapters at those weights."""
    from diffusers import StableDiffusionPipeline

    from sdlora.cli import main

    paths, _ = loras["sd15"]
    base_folder = tmp_path / "base"
    build_tiny_pipeline("sd15", seed=0).save_pretrained(base_folder)
    specs = [f"{paths[n]}:{w}" for n, w in WEIGHTS.items()]
    assert main(["bake", str(base_folder), *specs, "-o", str(tmp_path / "baked")]) == 0
    printed = capsys.readouterr().out
    baked = StableDiffusionPipeline.from_pretrained(tmp_path / "baked")
    diff = max_output_diff(outputs(baked, "sd15"), mixed_outputs("sd15", paths))
    print(f"bake: {printed.strip()}; max|diff| vs base + set_adapters {diff:.2e}")
    assert "baked 108 layers" in printed and diff <= 1e-5
    assert main(["bake", str(base_folder), *specs, "-o", str(tmp_path / "baked")]) == 2  # never overwrites

    # The same bake as one original-layout checkpoint (what A1111 / ComfyUI load) gives the same model.
    from sdlora.models.single_file import load_single_file

    single = tmp_path / "baked.safetensors"
    assert main(["bake", str(base_folder), *specs, "-o", str(single)]) == 0
    assert "single-file checkpoint" in capsys.readouterr().out
    from safetensors import safe_open

    with safe_open(str(single), "pt") as handle:
        assert "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight" in handle.keys()
    reloaded = load_single_file(single).pipeline()
    assert max_output_diff(outputs(reloaded, "sd15"), outputs(baked, "sd15")) <= 1e-6


@pytest.mark.slow  # ~70 s on 2 busy cores; test_blend_ui.py renders a preview in the default run
def test_preview_grid_columns(loras, tmp_path):
    """Columns: base (== the plain pipeline), each alone, the set_adapters blend, and the exact
    concat blend loaded from memory (== the set_adapters blend)."""
    from diffusers import StableDiffusionPipeline

    from sdlora.blend.preview import render_blend_preview

    paths, shape = loras["sd15"]
    base_folder = tmp_path / "base"
    build_tiny_pipeline("sd15", seed=0).save_pretrained(base_folder)
    inputs = read_blend_inputs([f"{paths['a']}:0.7", f"{paths['b']}:-0.3"], shape)
    saved = ("as saved", blend(inputs, "concat", shape=shape).adapter)
    grid = render_blend_preview(str(base_folder), [(paths["a"], 0.7), (paths["b"], -0.3)], ["a red square"],
                                [1, 2], steps=2, saved=saved)
    assert grid.titles == ["base", "sd15-a x0.7", "sd15-b x-0.3", "blend 0.7 + -0.3", "as saved"]
    assert grid.image.size == (5 * 64, 2 * 64)
    pixels = torch.from_numpy(np.asarray(grid.image, dtype=np.float32))
    tile = lambda row, col: pixels[64 * row: 64 * row + 64, 64 * col: 64 * col + 64]
    plain = StableDiffusionPipeline.from_pretrained(base_folder)
    plain.set_progress_bar_config(disable=True)
    reference = plain("a red square", num_inference_steps=2, guidance_scale=7.0, height=64, width=64,
                      generator=torch.Generator().manual_seed(1)).images[0]
    base_diff = (tile(0, 0) - torch.from_numpy(np.asarray(reference, dtype=np.float32))).abs().max().item()
    blend_vs_base = (tile(0, 3) - tile(0, 0)).abs().mean().item()
    saved_vs_blend = max((tile(r, 4) - tile(r, 3)).abs().max().item() for r in range(2))
    print(f"preview: base column vs plain pipeline max diff {base_diff} (0-255), blend vs base mean "
          f"{blend_vs_base:.1f}, as-saved vs set_adapters blend max {saved_vs_blend}")
    assert base_diff <= 1  # the base column is the model without LoRA
    assert blend_vs_base > 1  # the blend changes the picture
    assert saved_vs_blend <= 1  # the concat blend from memory renders like set_adapters
