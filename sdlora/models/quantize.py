"""QLoRA-style frozen base: the UNet's and text encoders' nn.Linear layers become bitsandbytes
int8 (LLM.int8) or nf4 layers, and PEFT puts its bitsandbytes LoRA layers on top of them.

Why the layers are replaced here rather than through `from_pretrained(quantization_config=...)`:
diffusers' bitsandbytes quantizer (0.42) refuses to run without a GPU ("No GPU found"), although
bitsandbytes >= 0.50 runs both layer kinds on CPU; single-file checkpoints are built in memory by
sdlora, not by `from_pretrained`; and one path for UNet and text encoders, CPU and CUDA, folders
and single files is the path the tests run. The new layers hold the loaded weights unquantized;
bitsandbytes quantizes them when the module is moved with `.to(device)`, so on CUDA the
full-precision weights never reach the GPU. Convolutions, norms, embeddings and the VAE stay as
they are, and the model configs are untouched: the saved LoRA is the same file as without
quantization and loads on the unquantized base.
"""
from __future__ import annotations

from ..errors import ModelError

QUANTIZED_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
MIN_BITSANDBYTES = (0, 50)  # the version measured to run int8 and nf4 forward/backward on CPU
INT8_THRESHOLD = 6.0  # LLM.int8 outlier threshold, as transformers' BitsAndBytesConfig default
PEFT_FLAGS = {"int8": "is_loaded_in_8bit", "nf4": "is_loaded_in_4bit"}  # what PEFT's bnb dispatch reads


def compute_dtype_for(model_cfg, mixed_precision: str):
    import torch

    name = model_cfg.quantize_compute_dtype
    if name == "auto":
        name = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}[mixed_precision]
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def quantize_base(base, cfg, device) -> dict:
    """Replace the frozen base's Linear layers per model.quantize and move the quantized components
    to `device` (which quantizes them); returns {component: layers replaced}. No-op for 'none'."""
    kind = cfg.model.quantize
    if kind == "none":
        return {}
    compute_dtype = compute_dtype_for(cfg.model, cfg.train.mixed_precision)
    check_quantization_supported(kind, device, compute_dtype)
    replaced = {}
    for name in QUANTIZED_COMPONENTS:
        module = getattr(base, name, None)
        if module is None:
            continue
        module.to("cpu")  # bitsandbytes quantizes on a move *from* the CPU (DreamBooth may have moved it)
        replaced[name] = replace_linear_layers(module, kind, compute_dtype)
        setattr(module, PEFT_FLAGS[kind], True)
        module.to(device)
    release_freed_memory()
    return replaced


def release_freed_memory() -> None:
    """Give the heap memory of the dropped full-precision weights back to the OS (glibc keeps freed
    blocks otherwise, and the process's RSS would not shrink). A no-op where glibc is not used."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def replace_linear_layers(module, kind: str, compute_dtype) -> int:
    """Swap every plain nn.Linear under `module` for its bitsandbytes twin holding the same
    (still unquantized) weights; returns how many were swapped."""
    import torch

    swaps = [(parent, child_name, child) for parent in module.modules()
             for child_name, child in parent.named_children() if type(child) is torch.nn.Linear]
    for parent, child_name, linear in swaps:
        setattr(parent, child_name, _bnb_linear(linear, kind, compute_dtype))
    return len(swaps)


def _bnb_linear(linear, kind: str, compute_dtype):
    import bitsandbytes as bnb
    import torch

    has_bias = linear.bias is not None
    weight = linear.weight.data
    if kind == "int8":
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=has_bias,
                                    has_fp16_weights=False, threshold=INT8_THRESHOLD, device="meta")
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=has_bias, compute_dtype=compute_dtype,
                                  quant_type="nf4", device="meta")
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    if has_bias:
        layer.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    return layer


def check_quantization_supported(kind: str, device, compute_dtype) -> None:
    """Raise ModelError naming the problem and the fix unless bitsandbytes can run `kind` on `device`:
    a version check, then one small layer quantized, run forward and backward there."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("bitsandbytes")
    except PackageNotFoundError:
        raise ModelError(f"model.quantize = '{kind}' needs the bitsandbytes package: pip install 'bitsandbytes>=0.50', "
                         "or set model.quantize = 'none'.") from None
    if _version_tuple(found) < MIN_BITSANDBYTES:
        raise ModelError(f"model.quantize = '{kind}' needs bitsandbytes >= 0.50 (found {found}): "
                         "pip install -U bitsandbytes, or set model.quantize = 'none'.")
    try:
        _probe(kind, device, compute_dtype)
    except Exception as exc:  # any failure of the library on this device means the same to the user
        raise ModelError(
            f"bitsandbytes {found} cannot run model.quantize = '{kind}' on {device} ({type(exc).__name__}: {exc}). "
            "Set model.quantize = 'none' (or 'int8' / 'nf4', whichever works here), or install a bitsandbytes "
            "build for this device."
        ) from exc


def _probe(kind: str, device, compute_dtype) -> None:
    import torch

    linear = torch.nn.Linear(64, 64)
    layer = _bnb_linear(linear, kind, compute_dtype).to(device)
    x = torch.randn(2, 64, device=device, dtype=compute_dtype, requires_grad=True)
    layer(x).float().sum().backward()
    if x.grad is None or not bool(torch.isfinite(x.grad).all()):
        raise RuntimeError("no finite input gradient through the quantized layer")


def _version_tuple(text: str) -> tuple:
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)
