"""Read a single-file checkpoint (original LDM layout) into diffusers components, offline.

Weights are renamed by diffusers' own single-file converters (convert_ldm_unet_checkpoint,
convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint, convert_open_clip_checkpoint), which
work offline once given a config; the configs come from configs.resolve_configs, never a hub.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import ModelError
from .configs import resolve_configs
from .keys import base_family, detect_family_from_keys

META_PREFIX = "sdlora."
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
CONVERT_HINT = (
    "convert it once to .safetensors on a machine you trust, or set model.allow_pickle = true "
    "(it is then read with torch.load(weights_only=True), which refuses code but still trusts the file)"
)


@dataclass
class SingleFile:
    """A loaded checkpoint: diffusers components plus what the file said about itself."""

    path: Path
    family: str  # sd15, sd2, sd2-v, sdxl
    prediction_type: str
    components: dict  # unet, vae, text_encoder, tokenizer, scheduler (+ text_encoder_2, tokenizer_2)
    config_sources: dict = field(default_factory=dict)  # component -> metadata | shipped | inferred

    def pipeline(self):
        """A diffusers StableDiffusion(XL)Pipeline over the components."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        if self.family == "sdxl":
            return StableDiffusionXLPipeline(**self.components)
        return StableDiffusionPipeline(
            **self.components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
        )


def read_tensors(path: Path, allow_pickle: bool = False) -> tuple[dict, dict]:
    """(tensors, metadata) of a .safetensors file, or of a pickle checkpoint when allowed."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Checkpoint not found: {path}")
    if path.suffix.lower() == ".safetensors":
        return _read_safetensors(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ModelError(
                f"{path} is a pickle checkpoint ({path.suffix}); pickle files can run code when loaded, so sdlora "
                f"does not open them by default: {CONVERT_HINT}."
            )
        return _read_pickle(path), {}
    raise ModelError(f"{path}: unknown checkpoint type {path.suffix!r}; expected .safetensors (or .ckpt with model.allow_pickle).")


def read_metadata(path: Path) -> dict:
    """The safetensors header's metadata only (no tensors are read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own error type, OSError, ValueError)
        raise _unreadable(path, exc) from None


def _unreadable(path: Path, exc: Exception) -> ModelError:
    return ModelError(
        f"{path} is not a readable .safetensors file ({type(exc).__name__}: {exc}); it may be truncated or damaged "
        "(an interrupted download?). Download or write it again."
    )


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    metadata = read_metadata(path)
    try:
        return load_file(str(path)), metadata
    except Exception as exc:  # noqa: BLE001  (as in read_metadata)
        raise _unreadable(path, exc) from None


def _read_pickle(path: Path) -> dict:
    import pickle

    import torch

    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise ModelError(f"{path} could not be read weights-only ({type(exc).__name__}: {str(exc)[:300]}).") from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise ModelError(f"{path} holds a {type(data).__name__}, not a state dict of tensors.")
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def detect_file_family(state: dict, metadata: dict, path: Path | str = "checkpoint") -> str:
    """sd15 / sd2 / sdxl from the keys; a clear error when the file is no SD checkpoint."""
    family = detect_family_from_keys(state)
    if family is None:
        sample = ", ".join(sorted(state)[:3]) or "no tensors"
        looks_lora = any("lora" in k for k in state)
        raise ModelError(
            f"{path} is not a Stable Diffusion checkpoint in the original single-file layout (no "
            f"model.diffusion_model.* UNet with a known text encoder; first keys: {sample})."
            + (" It looks like a LoRA: use it as a LoRA, not as model.path." if looks_lora else "")
        )
    return family


def resolve_prediction_type(family: str, metadata: dict, requested: str | None) -> str:
    """Explicit choice > sdlora metadata > modelspec metadata > the family's usual choice.
    SD2 weights look the same for 512-base (epsilon) and 768-v; like diffusers, an SD2 file that
    does not say is taken as 768-v: set model.prediction_type = epsilon for the 512-base."""
    if requested in ("epsilon", "v_prediction"):
        return requested
    if META_PREFIX + "prediction_type" in metadata:
        return metadata[META_PREFIX + "prediction_type"]
    spec = metadata.get("modelspec.prediction_type", "").lower()
    if spec in ("v", "v_prediction", "v-prediction"):
        return "v_prediction"
    if spec in ("epsilon", "eps"):
        return "epsilon"
    if metadata.get("modelspec.architecture", "").endswith("-v"):
        return "v_prediction"
    return "v_prediction" if family == "sd2" else "epsilon"


def _metadata_configs(metadata: dict) -> dict:
    configs = {}
    for key, value in metadata.items():
        if key.startswith(META_PREFIX + "config."):
            try:
                configs[key[len(META_PREFIX + "config."):]] = json.loads(value)
            except json.JSONDecodeError:
                raise ModelError(f"The checkpoint's metadata {key} is not valid JSON; remove it or rewrite the file.") from None
    return configs


def load_single_file(path, family=None, prediction_type=None, allow_pickle=False, torch_dtype=None) -> SingleFile:
    """Load a single-file SD1.x / SD2.x / SDXL checkpoint into diffusers components, with no network."""
    path = Path(path)
    state, metadata = read_tensors(path, allow_pickle)
    detected = detect_file_family(state, metadata, path)
    if family not in (None, "auto") and base_family(family) != detected:
        raise ModelError(f"model.family is {family!r} but {path} holds an {detected} checkpoint (from its keys).")
    wanted = prediction_type if prediction_type not in (None, "auto") else None
    if wanted is None and family in ("sd2", "sd2-v"):  # the family names the prediction type
        wanted = "v_prediction" if family == "sd2-v" else "epsilon"
    prediction = resolve_prediction_type(detected, metadata, wanted)
    family = "sd2-v" if detected == "sd2" and prediction == "v_prediction" else detected
    configs, sources = resolve_configs(state, family, _metadata_configs(metadata))
    from .build import build_components

    components = build_components(state, family, configs, torch_dtype)
    components["scheduler"].register_to_config(prediction_type=prediction)
    return SingleFile(path, family, prediction, components, sources)


def load_scheduler(path, family: str, prediction_type: str | None = None):
    """Just the scheduler of a single file (its header only), e.g. for previews."""
    from .build import build_scheduler
    from .configs import shipped_configs

    path = Path(path)
    metadata = read_metadata(path) if path.suffix.lower() == ".safetensors" else {}
    config = _metadata_configs(metadata).get("scheduler") or shipped_configs(family)["scheduler"]
    scheduler = build_scheduler(config)
    if prediction_type:
        scheduler.register_to_config(prediction_type=prediction_type)
    return scheduler


def single_file_configs(path, family: str | None = None) -> tuple[str, dict]:
    """(family, component configs) of a .safetensors checkpoint from its header alone: the
    tensors become weightless meta tensors of the right shapes, so no weights are read."""
    import torch
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            state = {key: torch.empty(handle.get_slice(key).get_shape(), device="meta") for key in handle.keys()}
    except Exception as exc:  # noqa: BLE001  (as in read_metadata)
        raise _unreadable(path, exc) from None
    detected = detect_file_family(state, metadata, path)
    if family in (None, "auto"):
        prediction = resolve_prediction_type(detected, metadata, None)
        family = "sd2-v" if detected == "sd2" and prediction == "v_prediction" else detected
    elif base_family(family) != detected:
        raise ModelError(f"--family {family} but {path} holds an {detected} checkpoint (from its keys).")
    configs, _ = resolve_configs(state, family, _metadata_configs(metadata))
    return family, configs


def peek_family(path, allow_pickle: bool = False) -> str:
    """sd15 / sd2 / sd2-v / sdxl of a checkpoint; for .safetensors from the header alone."""
    from safetensors import safe_open

    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys, metadata = list(handle.keys()), dict(handle.metadata() or {})
        except Exception as exc:  # noqa: BLE001  (as in read_metadata)
            raise _unreadable(path, exc) from None
        state = dict.fromkeys(keys)
    else:
        state, metadata = read_tensors(path, allow_pickle)
    family = detect_file_family(state, metadata, path)
    if family == "sd2" and resolve_prediction_type(family, metadata, None) == "v_prediction":
        return "sd2-v"
    return family



