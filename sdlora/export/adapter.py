"""sdlora's in-memory LoRA: per adapted module its down (A) and up (B) tensors and its alpha.

Module names are diffusers/PEFT paths with the component in front, in the names the installed
libraries use (`unet.down_blocks.0...to_q`, `text_encoder.encoder.layers.0.self_attn.q_proj`,
no `text_model.`). Effect of a module: W += (alpha / rank) * up @ down.
"""
from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from typing import Any

from .shapes import COMPONENTS


@dataclass
class LoraModule:
    down: Any  # torch.Tensor [r, in] or [r, in, kh, kw]
    up: Any  # torch.Tensor [out, r] or [out, r, 1, 1]
    alpha: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def is_conv(self) -> bool:
        return self.down.dim() == 4


@dataclass
class Adapter:
    family: str
    modules: dict  # "component.path" -> LoraModule
    metadata: dict = field(default_factory=dict)  # str -> str, as stored in the file

    def components(self) -> tuple:
        present = {name.split(".", 1)[0] for name in self.modules}
        return tuple(c for c in COMPONENTS if c in present)

    def of(self, component: str) -> dict:
        """{path inside the component: LoraModule}."""
        prefix = component + "."
        return {k[len(prefix):]: v for k, v in self.modules.items() if k.startswith(prefix)}

    def common_rank_alpha(self) -> tuple[int, float]:
        """The most frequent rank and alpha (kohya's ss_network_dim / ss_network_alpha)."""
        ranks = collections.Counter(m.rank for m in self.modules.values())
        alphas = collections.Counter(m.alpha for m in self.modules.values())
        return ranks.most_common(1)[0][0], alphas.most_common(1)[0][0]


def _strip_text_model(component: str, path: str) -> str:
    return path.removeprefix("text_model.") if component != "unet" else path


def adapter_from_models(family: str, adapter_name: str = "default", **components) -> Adapter:
    """Read the PEFT LoRA layers named `adapter_name` out of live models (unet=..., text_encoder=...)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    modules = {}
    for component, model in components.items():
        if model is None:
            continue
        for path, layer in model.named_modules():
            if not isinstance(layer, BaseTunerLayer) or adapter_name not in getattr(layer, "lora_A", {}):
                continue
            down = layer.lora_A[adapter_name].weight.detach().float().cpu().clone()
            up = layer.lora_B[adapter_name].weight.detach().float().cpu().clone()
            alpha = float(layer.scaling[adapter_name]) * down.shape[0]  # exact also for rsLoRA
            name = f"{component}.{_strip_text_model(component, path.removeprefix('base_model.model.'))}"
            modules[name] = LoraModule(down, up, alpha)
    return Adapter(family, modules)


def peft_config_for(modules: dict):
    """A LoraConfig that reproduces per-module rank and alpha for {path: LoraModule}."""
    from peft import LoraConfig

    ranks = collections.Counter(m.rank for m in modules.values())
    alphas = collections.Counter(m.alpha for m in modules.values())
    rank, alpha = ranks.most_common(1)[0][0], alphas.most_common(1)[0][0]
    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=sorted(modules),
        rank_pattern={re.escape(p): m.rank for p, m in modules.items() if m.rank != rank},
        alpha_pattern={re.escape(p): m.alpha for p, m in modules.items() if m.alpha != alpha},
    )


def load_into_models(adapter: Adapter, adapter_name: str = "default", **components) -> None:
    """Add the adapter to live models as PEFT LoRA layers (to blend, sample or continue training)."""
    import torch

    for component in adapter.components():
        model = components.get(component)
        if model is None:
            raise ValueError(f"the adapter has {component} layers but no {component} model was given")
        modules = adapter.of(component)
        if component != "unet" and hasattr(model, "text_model"):  # transformers 4 naming
            modules = {"text_model." + k: v for k, v in modules.items()}
        model.add_adapter(peft_config_for(modules), adapter_name=adapter_name)
        layers = dict(model.named_modules())
        with torch.no_grad():
            for path, module in modules.items():
                layer = layers[path]
                layer.lora_A[adapter_name].weight.copy_(module.down)
                layer.lora_B[adapter_name].weight.copy_(module.up)


def max_difference(a: Adapter, b: Adapter) -> float:
    """Largest absolute difference of any tensor or alpha; raises if the module sets differ."""
    if set(a.modules) != set(b.modules):
        only = sorted(set(a.modules) ^ set(b.modules))[:5]
        raise AssertionError(f"adapters cover different modules, e.g. {only}")
    worst = 0.0
    for name, m in a.modules.items():
        n = b.modules[name]
        if m.down.shape != n.down.shape or m.up.shape != n.up.shape:
            raise AssertionError(f"{name}: shapes differ")
        worst = max(worst, (m.down.float() - n.down.float()).abs().max().item(),
                    (m.up.float() - n.up.float()).abs().max().item(), abs(m.alpha - n.alpha))
    return worst
