"""Blend time for 3 LoRAs shaped like full-size SD1.5 LoRAs (rank 32, random weights) on CPU.

Targets: UNet attention (to_q/k/v/out), feed-forward and proj_in/out, text-encoder attention and
MLP — the usual kohya LoRA layer set (192 UNet + 72 text-encoder layers). Weights do not change
the speed, so they are random. Run: python bench/blend.py [--rank 32] [--threads N]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from sdlora.blend.files import write_blend_file
from sdlora.blend.merge import blend
from sdlora.blend.sources import BlendInput
from sdlora.export.adapter import Adapter, LoraModule
from sdlora.export.shapes import meta_components, standard_shape

UNET_LAYERS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
TEXT_LAYERS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def lora_layers(shape) -> dict:
    """{"component.path": weight shape} of the LoRA target layers of the real architecture."""
    layers = {}
    for component, model in meta_components(shape).items():
        names = UNET_LAYERS if component == "unet" else TEXT_LAYERS
        for path, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and path.endswith(names):
                layers[f"{component}.{path.removeprefix('text_model.')}"] = tuple(module.weight.shape)
    return layers


def random_adapter(layers: dict, rank: int, seed: int) -> Adapter:
    generator = torch.Generator().manual_seed(seed)
    modules = {}
    for name, (out, inp, *kernel) in layers.items():
        ones = [1] * len(kernel)  # 1x1 conv proj_in/out keep their 4-d shape
        down = torch.randn(rank, inp, *ones, generator=generator) * 0.01
        up = torch.randn(out, rank, *ones, generator=generator) * 0.01
        modules[name] = LoraModule(down, up, float(rank) / 2)
    return Adapter("sd15", modules)


def timed(label: str, fn, repeat: int = 3):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    print(f"{label:<44} {best:8.3f} s (best of {repeat})")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = standard_shape("sd15")
    layers = lora_layers(shape)
    inputs = [BlendInput(f"lora{i}", random_adapter(layers, args.rank, i), w) for i, w in enumerate((0.7, 0.3, -0.2))]
    params = sum(m.down.numel() + m.up.numel() for m in inputs[0].adapter.modules.values())
    print(f"3 SD1.5 LoRAs, rank {args.rank}, {len(layers)} layers, {params / 1e6:.1f}M parameters each; "
          f"torch {torch.__version__}, {args.threads} CPU thread(s)")
    timed(f"concat (exact, rank {3 * args.rank})", lambda: blend(inputs, "concat", shape=shape))
    for rank in (args.rank, 2 * args.rank):
        result = timed(f"svd to rank {rank}", lambda r=rank: blend(inputs, "svd", rank=r, shape=shape),
                       repeat=1)
        print(f"{'':<44} relative error {result.relative_error:.3f}, retained energy {result.retained_energy:.3f}")
    with tempfile.TemporaryDirectory() as folder:
        result = blend(inputs, "concat", shape=shape)
        path = Path(folder) / "blend.safetensors"
        report = timed("write fp16 file + compatibility check", lambda: write_blend_file(
            result, inputs, path.with_name(f"b{time.perf_counter_ns()}.safetensors"), shape), repeat=1)
        print(f"{'':<44} check: {'PASS' if report.ok else 'FAIL'}")


if __name__ == "__main__":
    main()
