"""Write an Adapter as a .safetensors LoRA file (atomically, hash over the final bytes) and read
any kohya / diffusers / PEFT LoRA file back into an Adapter, with clear errors for bad files."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import LoraFileError
from ..fsutil import atomic_path
from .adapter import Adapter
from .keys import from_kohya_state_dict, from_peft_state_dict, layout_of, to_diffusers_state_dict, to_kohya_state_dict
from .metadata import HASH_KEY, family_from_metadata, tensor_bytes_hash
from .shapes import ModelShape, standard_shape

LAYOUTS = ("kohya", "diffusers")
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # where diffusers keeps rank/alpha config
_SDXL_SIGNS = ("lora_te1_", "lora_te2_", "lora_unet_input_blocks", "lora_unet_middle_block",
               "lora_unet_output_blocks", "text_encoder_2.")


def lora_file_bytes(adapter: Adapter, layout: str, dtype: str, shape: ModelShape | None = None) -> bytes:
    """The complete file: tensors in `layout` and `dtype`, adapter.metadata plus sshs_model_hash."""
    import torch
    from safetensors.torch import save

    if layout not in LAYOUTS or dtype not in DTYPES:
        raise LoraFileError(f"layout must be one of {LAYOUTS} and dtype one of {tuple(DTYPES)}; got {layout!r}, {dtype!r}")
    torch_dtype = getattr(torch, DTYPES[dtype])
    metadata = {k: v for k, v in adapter.metadata.items() if k != HASH_KEY}
    metadata["format"] = "pt"
    if layout == "kohya":
        tensors = to_kohya_state_dict(adapter.modules, shape or standard_shape(adapter.family), torch_dtype)
        metadata.pop(LORA_ADAPTER_METADATA_KEY, None)
    else:
        tensors, config = to_diffusers_state_dict(adapter.modules, torch_dtype)
        metadata[LORA_ADAPTER_METADATA_KEY] = json.dumps(config, sort_keys=True)
    draft = save(tensors, metadata=metadata)
    # The tensor bytes do not depend on the header, so the hash of the draft is the final file's.
    metadata[HASH_KEY] = tensor_bytes_hash(draft)
    data = save(tensors, metadata=metadata)
    if tensor_bytes_hash(data) != metadata[HASH_KEY]:
        raise RuntimeError("tensor bytes changed between drafts; sshs_model_hash would be wrong")
    return data


def write_lora_file(adapter: Adapter, path: Path, layout: str = "kohya", dtype: str = "fp32",
                    shape: ModelShape | None = None) -> Path:
    data = lora_file_bytes(adapter, layout, dtype, shape)
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def read_header(data: bytes, name: str = "file") -> dict:
    """The JSON header of safetensors bytes, or a LoraFileError that says what is wrong."""
    if len(data) < 8:
        raise LoraFileError(f"{name} is truncated ({len(data)} bytes): not a complete .safetensors file.")
    length = int.from_bytes(data[:8], "little")
    if length > len(data) - 8:
        raise LoraFileError(f"{name} is truncated or not a .safetensors file (header says {length} bytes, file has {len(data) - 8}).")
    raw = data[8 : 8 + length]
    if not raw.startswith(b'{"'):
        raise LoraFileError(f"{name} has no safetensors JSON header (it starts with {raw[:8]!r}); A1111 rejects it too.")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoraFileError(f"{name} has a damaged safetensors header ({exc}).") from None


def load_file_tensors(path: Path) -> tuple[dict, dict]:
    """(tensors, string metadata) of a .safetensors file, with clear errors."""
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise LoraFileError(f"{path} does not exist.")
    data = path.read_bytes()
    header = read_header(data, str(path))
    try:
        tensors = load(data)
    except Exception as exc:  # safetensors raises its own error type for every damaged layout
        raise LoraFileError(f"{path} is damaged or truncated: {exc}") from None
    return tensors, dict(header.get("__metadata__") or {})


def detect_family(tensors: dict, metadata: dict) -> str:
    """Family from metadata first, then SDXL key names, then the cross-attention / text width."""
    family = family_from_metadata(metadata)
    if family:
        return family
    if any(k.startswith(_SDXL_SIGNS) for k in tensors):
        return "sdxl"
    for key, tensor in tensors.items():
        if ("attn2_to_k" in key or "attn2.to_k" in key) and ("lora_down" in key or "lora_A" in key):
            width = tensor.shape[1]
            if width in (768, 1024):
                return "sd15" if width == 768 else "sd2"
    raise LoraFileError("cannot tell the model family from this file (no metadata); pass it explicitly (--family).")


def adapter_from_tensors(tensors: dict, metadata: dict, family: str | None = None,
                         shape: ModelShape | None = None) -> Adapter:
    if not tensors:
        raise LoraFileError("the file holds no tensors.")
    layout = layout_of(tensors)
    family = shape.family if shape else (family or detect_family(tensors, metadata))
    if layout == "kohya":
        modules = from_kohya_state_dict(tensors, shape or standard_shape(family))
    else:
        raw = metadata.get(LORA_ADAPTER_METADATA_KEY)
        modules = from_peft_state_dict(tensors, json.loads(raw) if raw else None)
    return Adapter(family, modules, dict(metadata))


def read_lora_file(path: Path, family: str | None = None, shape: ModelShape | None = None) -> Adapter:
    """Any kohya / diffusers / PEFT LoRA file as an Adapter (family from metadata and keys)."""
    tensors, metadata = load_file_tensors(path)
    return adapter_from_tensors(tensors, metadata, family, shape)
