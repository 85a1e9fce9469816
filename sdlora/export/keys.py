"""Tensor key layouts: kohya/A1111 (`lora_unet_..._to_q.lora_down.weight` + `.alpha`) and
diffusers/PEFT (`unet.<path>.lora_A.weight`), to and from sdlora's Adapter modules.

kohya names cannot be split back into module paths by rule (`_` is both separator and part of
names), so reading goes through a table of every layer name of the model's shape.
"""
from __future__ import annotations

import functools
import re

from ..errors import LoraFileError
from .adapter import LoraModule
from .ldm_names import unet_to_ldm, with_text_model
from .shapes import ModelShape, meta_components, unet_layout

KOHYA_TEXT_PREFIX = {"text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
_KOHYA_PARTS = ("lora_down.weight", "lora_up.weight", "alpha")
_PEFT_KEY = re.compile(r"^(.+)\.(lora_A|lora_B)(?:\.[\w-]+)?\.weight$")


def kohya_module_name(component: str, path: str, shape: ModelShape) -> str | None:
    """kohya name of one adapted layer, e.g. `lora_unet_down_blocks_0_..._to_q`; None if it has none."""
    if component == "unet":
        if shape.family == "sdxl":
            path = unet_to_ldm(path, *unet_layout(shape))
            if path is None:
                return None
        return "lora_unet_" + path.replace(".", "_")
    prefix = KOHYA_TEXT_PREFIX[component]
    if shape.family == "sdxl" and component == "text_encoder":
        prefix = "lora_te1_"
    return prefix + with_text_model(path).replace(".", "_")


@functools.lru_cache(maxsize=8)
def kohya_name_table(shape: ModelShape) -> dict:
    """{kohya layer name: "component.path"} for every Linear / Conv2d layer of the shape."""
    import torch

    table = {}
    for component, model in meta_components(shape).items():
        for path, module in model.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                name = kohya_module_name(component, path, shape)
                if name is not None:
                    table[name] = f"{component}.{path}"
    return table


def to_kohya_state_dict(modules: dict, shape: ModelShape, dtype) -> dict:
    """kohya tensors for {"component.path": LoraModule}: down, up and a 0-dim alpha per layer."""
    import torch

    state = {}
    for full_name, module in sorted(modules.items()):
        component, path = full_name.split(".", 1)
        name = kohya_module_name(component, path, shape)
        if name is None:
            raise LoraFileError(f"{full_name} has no name in the kohya/A1111 layout; export with --format diffusers.")
        state[f"{name}.lora_down.weight"] = module.down.to(dtype).contiguous()
        state[f"{name}.lora_up.weight"] = module.up.to(dtype).contiguous()
        state[f"{name}.alpha"] = torch.tensor(float(module.alpha), dtype=dtype)
    return state


def from_kohya_state_dict(state: dict, shape: ModelShape) -> dict:
    """{"component.path": LoraModule} from kohya tensors; unknown names and half pairs are errors."""
    table = kohya_name_table(shape)
    groups: dict = {}
    for key, tensor in state.items():
        name, _, part = key.partition(".")
        if part not in _KOHYA_PARTS:
            raise LoraFileError(f"{key}: not a LoRA tensor (expected .lora_down.weight, .lora_up.weight or .alpha).")
        groups.setdefault(name, {})[part] = tensor
    unknown = sorted(n for n in groups if n not in table)
    if unknown:
        raise LoraFileError(
            f"{len(unknown)} layer name(s) do not exist in a {shape.family} model, e.g. {unknown[0]}; "
            "the file is for another model family or architecture (try --base MODEL or --family)."
        )
    modules = {}
    for name, parts in groups.items():
        if "lora_down.weight" not in parts or "lora_up.weight" not in parts:
            raise LoraFileError(f"{name}: needs both lora_down.weight and lora_up.weight.")
        down, up = parts["lora_down.weight"].float(), parts["lora_up.weight"].float()
        alpha = float(parts["alpha"].item()) if "alpha" in parts else float(down.shape[0])  # missing = scale 1
        modules[_strip_text_model(table[name])] = LoraModule(down, up, alpha)
    return modules


def _strip_text_model(full_name: str) -> str:
    component, path = full_name.split(".", 1)
    return full_name if component == "unet" else f"{component}.{path.removeprefix('text_model.')}"


def to_diffusers_state_dict(modules: dict, dtype) -> tuple[dict, dict]:
    """diffusers/PEFT tensors plus the adapter metadata diffusers reads for rank and alpha.
    Text-encoder keys keep `text_model.` (what ComfyUI maps; diffusers strips it when needed)."""
    from .adapter import peft_config_for

    state, metadata = {}, {}
    by_component: dict = {}
    for full_name, module in sorted(modules.items()):
        component, path = full_name.split(".", 1)
        by_component.setdefault(component, {})[path] = module
        key_path = path if component == "unet" else with_text_model(path)
        state[f"{component}.{key_path}.lora_A.weight"] = module.down.to(dtype).contiguous()
        state[f"{component}.{key_path}.lora_B.weight"] = module.up.to(dtype).contiguous()
    for component, component_modules in by_component.items():
        config = peft_config_for(component_modules)
        fields = {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": sorted(config.target_modules),
                  "rank_pattern": config.rank_pattern, "alpha_pattern": config.alpha_pattern}
        metadata.update({f"{component}.{k}": v for k, v in fields.items()})
    return state, metadata


def from_peft_state_dict(state: dict, adapter_metadata: dict | None) -> dict:
    """{"component.path": LoraModule} from diffusers (`unet.x.lora_A.weight`) or PEFT
    (`base_model.model.x.lora_A.weight`, taken as UNet) keys; alpha from diffusers' metadata."""
    pairs: dict = {}
    for key, tensor in state.items():
        m = _PEFT_KEY.match(key.removeprefix("base_model.model."))
        if not m:
            raise LoraFileError(f"{key}: not a LoRA tensor (expected <module>.lora_A.weight / .lora_B.weight).")
        name = m[1] if key.startswith(("unet.", "text_encoder.", "text_encoder_2.")) else f"unet.{m[1]}"
        pairs.setdefault(_strip_text_model(name), {})[m[2]] = tensor
    modules = {}
    for name, parts in pairs.items():
        if set(parts) != {"lora_A", "lora_B"}:
            raise LoraFileError(f"{name}: needs both lora_A and lora_B weights.")
        down, up = parts["lora_A"].float(), parts["lora_B"].float()
        modules[name] = LoraModule(down, up, _alpha_from_metadata(name, down.shape[0], adapter_metadata))
    return modules


def _alpha_from_metadata(full_name: str, rank: int, metadata: dict | None) -> float:
    """PEFT's rule: alpha_pattern match, else lora_alpha, else alpha = rank (scale 1)."""
    if not metadata:
        return float(rank)
    component, path = full_name.split(".", 1)
    get = lambda field, default: metadata.get(f"{component}.{field}", metadata.get(field, default))  # noqa: E731
    for pattern, alpha in (get("alpha_pattern", {}) or {}).items():
        if re.match(rf"(.*\.)?({pattern})$", path) or re.match(rf"(.*\.)?({pattern})$", with_text_model(path)):
            return float(alpha)
    return float(get("lora_alpha", rank))


def layout_of(keys) -> str:
    """'kohya' or 'diffusers'; a mix of both (or neither) is an error."""
    keys = list(keys)
    kohya = [k for k in keys if k.startswith(KOHYA_PREFIXES)]
    if kohya and len(kohya) == len(keys):
        return "kohya"
    if not kohya and keys and all(".lora_A." in k or ".lora_B." in k for k in keys):
        return "diffusers"
    if kohya:
        other = next(k for k in keys if not k.startswith(KOHYA_PREFIXES))
        raise LoraFileError(f"mixed key layouts: kohya keys ({kohya[0]}) and others ({other}); tools load such files only partly.")
    raise LoraFileError(
        f"not a LoRA file: no kohya (lora_unet_/lora_te_) or diffusers (lora_A/lora_B) keys, e.g. {keys[:1] or 'no tensors'}."
    )
