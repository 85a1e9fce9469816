"""`sdlora check`: prove a LoRA file loads. (a) diffusers' own loader consumes every layer, with
the right alpha, and logs no unexpected/missing keys; (b) A1111's key lookup matches every layer
(and OpenCLIP q/k/v/out come together); (c) the metadata is complete and right for the family.
The models are weightless meta copies of the base (or of the family's real architecture)."""
from __future__ import annotations

import contextlib
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from .a1111 import a1111_layer_names, a1111_lookup, incomplete_fused_attention
from .io import adapter_from_tensors, load_file_tensors
from .keys import layout_of
from .metadata import HASH_KEY, REQUIRED_KEYS, expected_metadata, family_from_metadata, tensor_bytes_hash
from .shapes import ModelShape, fresh_meta_components, standard_shape

_LOADER_LOGGERS = ("diffusers", "peft", "transformers")
_KEY_TROUBLE = re.compile(r"unexpected|missing|load report|not loaded|could not|no lora keys", re.IGNORECASE)
CHECK_ADAPTER = "sdlora_check"


@dataclass
class CheckResult:
    name: str
    ok: bool
    summary: str
    details: list = field(default_factory=list)


@dataclass
class CheckReport:
    path: Path
    headline: str
    results: list

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    def text(self, max_details: int = 8) -> str:
        lines = [f"{self.path}: {self.headline}"]
        for r in self.results:
            lines.append(f"  [{'ok' if r.ok else 'FAIL'}] {r.name}: {r.summary}")
            lines += [f"         {d}" for d in r.details[:max_details]]
            if len(r.details) > max_details:
                lines.append(f"         ... and {len(r.details) - max_details} more")
        skipped = any(r.summary.startswith("skipped") for r in self.results)
        tools = "diffusers and ComfyUI (not A1111)" if skipped else "diffusers and A1111-style tools"
        lines.append(f"PASS: loads completely in {tools}." if self.ok else "FAILED: see above.")
        return "\n".join(lines)


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _captured_loader_logs():
    """Route the loaders' warnings to a list (and off the console) while a check runs."""
    capture, saved = _Capture(), []
    for name in _LOADER_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.handlers[:], logger.propagate))
        logger.handlers, logger.propagate = [capture], False
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*non-meta parameter.*meta parameter")
            yield capture.messages
    finally:
        for logger, level, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)


def _diffusers_load(path: Path, adapter, shape: ModelShape) -> dict:
    """Load the file the way load_lora_weights does; return the models it was loaded into."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    pipeline_class = StableDiffusionXLPipeline if shape.family == "sdxl" else StableDiffusionPipeline
    models = fresh_meta_components(shape)
    state, alphas, metadata = pipeline_class.lora_state_dict(
        str(path), unet_config=models["unet"].config, return_lora_metadata=True
    )
    if "unet" in adapter.components():
        pipeline_class.load_lora_into_unet(state, alphas, models["unet"], adapter_name=CHECK_ADAPTER, metadata=metadata)
    for name in adapter.components():
        if name != "unet":
            pipeline_class.load_lora_into_text_encoder(
                state, alphas, models[name], prefix=name, adapter_name=CHECK_ADAPTER, metadata=metadata
            )
    return models


def _loaded_scales(models: dict) -> dict:
    """{"component.path": scaling} of every layer the loader added the check adapter to."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    scales = {}
    for component, model in models.items():
        for path, layer in model.named_modules():
            if isinstance(layer, BaseTunerLayer) and CHECK_ADAPTER in getattr(layer, "scaling", {}):
                scales[f"{component}.{path.removeprefix('text_model.')}"] = layer.scaling[CHECK_ADAPTER]
    return scales


def check_diffusers(path: Path, adapter, shape: ModelShape) -> CheckResult:
    name = "diffusers load_lora_weights"
    with _captured_loader_logs() as messages:
        try:
            models = _diffusers_load(path, adapter, shape)
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            return CheckResult(name, False, f"the loader raised {type(exc).__name__}", [str(exc)[:500]])
    scales = _loaded_scales(models)
    problems = [f"not loaded: {k}" for k in sorted(set(adapter.modules) - set(scales))]
    problems += [f"loaded but not in the file: {k}" for k in sorted(set(scales) - set(adapter.modules))]
    for key, module in adapter.modules.items():
        if key in scales and abs(scales[key] - module.alpha / module.rank) > 1e-6 * max(1.0, scales[key]):
            problems.append(f"{key}: scale {scales[key]:g}, file says alpha/rank = {module.alpha / module.rank:g}")
    problems += [f"loader warning: {m.splitlines()[0]}" for m in messages if _KEY_TROUBLE.search(m)]
    loaded = len(set(adapter.modules) & set(scales))
    summary = f"{loaded}/{len(adapter.modules)} layers loaded" + ("" if problems else ", alpha honoured, no key warnings")
    return CheckResult(name, not problems, summary, problems)


def check_a1111(tensors: dict, shape: ModelShape) -> CheckResult:
    name = "A1111 key lookup"
    if layout_of(tensors) != "kohya":
        return CheckResult(name, True, "skipped: A1111 does not read the diffusers layout (export --format kohya for A1111/Forge)")
    groups: dict = {}
    for key in tensors:
        layer, _, part = key.partition(".")
        groups.setdefault(layer, set()).add(part)
    layers = a1111_layer_names(shape)
    is_sd2 = shape.family in ("sd2", "sd2-v")
    matched = {layer: a1111_lookup(layer, layers, is_sd2) for layer in groups}
    problems = [f"no layer for {k} (A1111 ignores it silently)" for k, v in sorted(matched.items()) if v is None]
    problems += [f"{k} lacks lora_up/lora_down" for k, p in sorted(groups.items())
                 if not {"lora_up.weight", "lora_down.weight"} <= p]
    problems += incomplete_fused_attention(matched)
    fused = {v for v in matched.values() if v and v.endswith("_attn")}
    summary = f"{sum(v is not None for v in matched.values())}/{len(groups)} layers matched"
    if fused:
        summary += f", OpenCLIP q/k/v/out complete in {len(fused) - len(incomplete_fused_attention(matched))}/{len(fused)} attention layers"
    return CheckResult(name, not problems, summary, problems)


def check_metadata(data: bytes, metadata: dict, adapter, family: str) -> CheckResult:
    name = "metadata"
    problems = [f"missing {k}" for k in REQUIRED_KEYS if k not in metadata]
    for key, value in expected_metadata(family).items():
        if key in metadata and metadata[key] != value:
            problems.append(f"{key} = {metadata[key]!r}, expected {value!r} for {family}")
    if HASH_KEY in metadata and metadata[HASH_KEY] != tensor_bytes_hash(data):
        problems.append(f"{HASH_KEY} does not match the file's tensor bytes")
    rank, alpha = adapter.common_rank_alpha()
    if metadata.get("ss_network_dim") not in (None, str(rank)):
        problems.append(f"ss_network_dim = {metadata['ss_network_dim']}, the tensors have rank {rank}")
    if "ss_network_alpha" in metadata and _as_float(metadata["ss_network_alpha"]) != alpha:
        problems.append(f"ss_network_alpha = {metadata['ss_network_alpha']}, the tensors have alpha {alpha:g}")
    summary = "complete for " + family if not problems else f"{len(problems)} problem(s)"
    return CheckResult(name, not problems, summary, problems)


def _as_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def check_lora_file(path: Path, shape: ModelShape | None = None, family: str | None = None) -> CheckReport:
    """Run the three checks. Unreadable or non-LoRA files raise LoraFileError (a clear message)."""
    path = Path(path)
    tensors, metadata = load_file_tensors(path)
    adapter = adapter_from_tensors(tensors, metadata, family, shape)
    shape = shape or standard_shape(adapter.family)
    rank, alpha = adapter.common_rank_alpha()
    counts = ", ".join(f"{c} {len(adapter.of(c))}" for c in adapter.components())
    headline = (f"{layout_of(tensors)} layout, {shape.family}, {len(adapter.modules)} layers ({counts}), "
                f"rank {rank}, alpha {alpha:g}")
    results = [check_diffusers(path, adapter, shape), check_a1111(tensors, shape)]
    meta_family = family_from_metadata(metadata)
    results.append(check_metadata(path.read_bytes(), metadata, adapter, shape.family))
    if meta_family and meta_family != shape.family:
        results[-1].ok = False
        results[-1].details.insert(0, f"metadata names {meta_family} but the base model is {shape.family}")
    return CheckReport(path, headline, results)
