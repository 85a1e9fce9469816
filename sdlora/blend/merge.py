"""Blend Adapters: exact concatenation or SVD re-rank of each layer's weighted sum.

For input i on a layer: c_i = w_i * block multiplier * alpha_i / r_i and dW_i = up_i @ down_i.
- concat: down = rows(c_i down_i), up = cols(up_i), rank = sum r_i, alpha = rank (scale 1), so
  up @ down = sum c_i dW_i exactly (negative weights too).
- svd: M = sum c_i dW_i (3x3 conv flattened to [out, in*k*k]); keep the top-k singular triplets:
  up = U_k S_k, down = V_k^T, alpha = k. The discarded energy is reported, per layer and overall.
A layer missing from some inputs takes only the inputs that have it.

Written files carry ONE alpha for all layers (the most common rank): a layer of another rank R
keeps that alpha and has R / alpha folded into its down factor, so it is still exact. Reason:
diffusers 0.42's kohya loader drops per-layer alphas of text encoders (its alpha_pattern keeps
`text_model.`, which transformers 5 module names lack) and mis-scales some UNet layers.
"""
from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

from ..export.adapter import Adapter, LoraModule
from ..export.shapes import ModelShape, standard_shape
from . import BlendError
from .blocks import block_multiplier

METHODS = ("concat", "svd")


@dataclass
class LayerError:
    name: str
    rank: int
    relative_error: float  # ||M - M_k||_F / ||M||_F
    retained_energy: float  # sum of kept s^2 / sum of all s^2


@dataclass
class BlendResult:
    adapter: Adapter
    method: str
    layers: list = field(default_factory=list)  # LayerError per layer (svd only)
    relative_error: float = 0.0  # over all layers: sqrt(sum discarded s^2 / sum s^2)
    retained_energy: float = 1.0

    def text(self, worst: int = 5) -> str:
        ranks = sorted({m.rank for m in self.adapter.modules.values()})
        rank_text = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}..{ranks[-1]}"
        lines = [f"{self.method} blend: {len(self.adapter.modules)} layers, rank {rank_text}"]
        if self.method == "concat":
            lines[0] += ", exact (up @ down = sum of weighted deltas)"
            return "\n".join(lines)
        lines[0] += (f", relative Frobenius error {self.relative_error:.3e}, "
                     f"retained energy {100 * self.retained_energy:.4f}%")
        for layer in sorted(self.layers, key=lambda e: -e.relative_error)[:worst]:
            lines.append(f"  {layer.name}: rank {layer.rank}, error {layer.relative_error:.3e}, "
                         f"retained {100 * layer.retained_energy:.4f}%")
        return "\n".join(lines)


def layer_terms(inputs: list, shape: ModelShape) -> dict:
    """{module name: [(c_i, LoraModule_i), ...]} over the union of the inputs' layers (c_i != 0)."""
    names = sorted({name for item in inputs for name in item.adapter.modules})
    terms = {}
    for name in names:
        present = [(item, item.adapter.modules[name]) for item in inputs if name in item.adapter.modules]
        _check_shapes(name, [m for _, m in present])
        scaled = [(item.weight * block_multiplier(name, item.blocks, shape) * m.alpha / m.rank, m)
                  for item, m in present]
        scaled = [(c, m) for c, m in scaled if c != 0.0]
        if scaled:
            terms[name] = scaled
    return terms


def _check_shapes(name: str, modules: list) -> None:
    shapes = {(tuple(m.down.shape[1:]), int(m.up.shape[0])) for m in modules}
    if len(shapes) > 1:
        raise BlendError(f"{name}: the inputs disagree on the layer's shape {sorted(shapes)}; "
                         "they were trained on different base architectures.")


def concat_modules(terms: list) -> LoraModule:
    import torch

    down = torch.cat([c * m.down.float() for c, m in terms], dim=0)  # one rounding per element: exact to fp32
    up = torch.cat([m.up.float() for _, m in terms], dim=1)
    return LoraModule(down.contiguous(), up.contiguous(), float(down.shape[0]))


def weighted_delta(terms: list):
    """M = sum c_i up_i @ down_i in float64, convs flattened to [out, in*kh*kw]."""
    up, down = stacked_factors(terms)
    return up @ down


def stacked_factors(terms: list):
    """(U [out, R], D [R, in*kh*kw]) in float64 with U @ D = M."""
    import torch

    up = torch.cat([m.up.double().reshape(m.up.shape[0], -1) for _, m in terms], dim=1)
    down = torch.cat([c * m.down.double().reshape(m.rank, -1) for c, m in terms], dim=0)
    return up, down


def svd_module(terms: list, rank: int) -> tuple[LoraModule, float, float]:
    """Top-`rank` factorisation of M = sum c_i dW_i: (module, ||M||_F^2, discarded energy).
    Works on the stacked factors (QR of each side, SVD of the small core), never on M itself."""
    import torch

    up, down = stacked_factors(terms)
    q_up, r_up = torch.linalg.qr(up)
    q_down, r_down = torch.linalg.qr(down.T)
    u, s, vh = torch.linalg.svd(r_up @ r_down.T)
    k = max(1, min(rank, int(s.shape[0])))
    energy = s.square()
    total = float(energy.sum())
    discarded = float(energy[k:].sum())
    new_up = (q_up @ u[:, :k]) * s[:k]
    new_down = vh[:k] @ q_down.T
    first = terms[0][1]
    if first.is_conv:
        new_up = new_up.reshape(new_up.shape[0], k, 1, 1)
        new_down = new_down.reshape(k, *first.down.shape[1:])
    module = LoraModule(new_down.float().contiguous(), new_up.float().contiguous(), float(k))
    return module, total, discarded


def _error(total: float, discarded: float) -> tuple[float, float]:
    """(relative Frobenius error, retained energy) from ||M||^2 and the discarded s^2."""
    return (math.sqrt(discarded / total), 1.0 - discarded / total) if total > 0 else (0.0, 1.0)


def with_uniform_alpha(modules: dict) -> dict:
    """Same effect, one alpha for every layer (see the module docstring for why)."""
    if not modules:
        return modules
    alpha = float(collections.Counter(m.rank for m in modules.values()).most_common(1)[0][0])
    uniform = {}
    for name, m in modules.items():
        factor = (m.alpha / m.rank) / (alpha / m.rank)  # old scale / new scale
        down = m.down if factor == 1.0 else (m.down.double() * factor).float().contiguous()
        uniform[name] = LoraModule(down, m.up, alpha)
    return uniform


def _family_and_shape(inputs: list, shape: ModelShape | None) -> tuple[str, ModelShape]:
    if not inputs:
        raise BlendError("nothing to blend: no inputs.")
    family = inputs[0].adapter.family
    return family, shape or standard_shape(family)


def concat_blend(inputs: list, shape: ModelShape | None = None) -> BlendResult:
    family, shape = _family_and_shape(inputs, shape)
    modules = {name: concat_modules(t) for name, t in layer_terms(inputs, shape).items()}
    return BlendResult(Adapter(family, with_uniform_alpha(modules)), "concat")


def svd_blend(inputs: list, rank: int, conv_rank: int | None = None, shape: ModelShape | None = None) -> BlendResult:
    """Re-rank every layer to `rank` (3x3 conv layers to `conv_rank`, default `rank`)."""
    if rank < 1 or (conv_rank is not None and conv_rank < 1):
        raise BlendError(f"--rank and --conv-rank must be at least 1 (got {rank}, {conv_rank}).")
    family, shape = _family_and_shape(inputs, shape)
    modules, layers, total, discarded = {}, [], 0.0, 0.0
    for name, terms in layer_terms(inputs, shape).items():
        is_3x3 = terms[0][1].is_conv and terms[0][1].down.shape[-1] > 1
        module, energy, lost = svd_module(terms, (conv_rank or rank) if is_3x3 else rank)
        modules[name] = module
        layers.append(LayerError(name, module.rank, *_error(energy, lost)))
        total, discarded = total + energy, discarded + lost
    return BlendResult(Adapter(family, with_uniform_alpha(modules)), "svd", layers, *_error(total, discarded))


def blend(inputs: list, method: str = "concat", rank: int | None = None, conv_rank: int | None = None,
          shape: ModelShape | None = None) -> BlendResult:
    if method not in METHODS:
        raise BlendError(f"method must be one of {', '.join(METHODS)}; got {method!r}.")
    if method == "concat":
        return concat_blend(inputs, shape)
    if rank is None:
        raise BlendError("--method svd needs --rank R (the rank of every re-factored layer).")
    return svd_blend(inputs, rank, conv_rank, shape)
