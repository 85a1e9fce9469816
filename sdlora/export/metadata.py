"""The safetensors header metadata A1111, civitai and kohya tools read: ss_*, modelspec.* (1.0.1),
trigger words, and sshs_model_hash (SHA-256 of the tensor bytes after the header)."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field

BASE_MODEL_VERSION = {"sd15": "sd_v1", "sd2": "sd_v2", "sd2-v": "sd_v2_v", "sdxl": "sdxl_base_v1-0"}
ARCHITECTURE = {
    "sd15": "stable-diffusion-v1/lora",
    "sd2": "stable-diffusion-v2-512/lora",
    "sd2-v": "stable-diffusion-v2-768-v/lora",
    "sdxl": "stable-diffusion-xl-v1-base/lora",
}
IMPLEMENTATION = {"sdxl": "https://github.com/Stability-AI/generative-models"}  # kohya's value; else diffusers
FAMILY_OF_VERSION = {v: k for k, v in BASE_MODEL_VERSION.items()}
FAMILY_OF_ARCHITECTURE = {v: k for k, v in ARCHITECTURE.items()}

# Every key written for every family (check (c) requires them all).
REQUIRED_KEYS = (
    "ss_base_model_version", "ss_v2", "ss_network_module", "ss_network_dim", "ss_network_alpha",
    "ss_network_args", "ss_output_name", "ss_sd_model_name", "ss_resolution", "ss_clip_skip", "ss_steps",
    "ss_epoch", "ss_training_started_at", "ss_training_finished_at", "ss_tag_frequency", "ss_dataset_dirs",
    "ss_bucket_info", "sshs_model_hash", "modelspec.sai_model_spec", "modelspec.architecture",
    "modelspec.implementation", "modelspec.title", "modelspec.resolution", "modelspec.date",
    "modelspec.prediction_type",
)
HASH_KEY = "sshs_model_hash"


@dataclass
class TrainingInfo:
    """What the file should say about how it was made (unknown values stay empty)."""

    output_name: str = "lora"
    base_model_name: str = ""
    resolution: int = 512
    steps: int = 0
    epoch: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    clip_skip: int | None = None
    tag_frequency: dict = field(default_factory=dict)  # dataset dir -> {tag: count}
    dataset_dirs: dict = field(default_factory=dict)  # dataset dir -> {"n_repeats": n, "img_count": c}
    num_images: int = 0
    trigger_words: list = field(default_factory=list)


def _network_args(adapter) -> dict:
    """kohya's networks.lora records LoCon (3x3 conv) rank/alpha as conv_dim / conv_alpha."""
    conv = [m for m in adapter.modules.values() if m.is_conv and m.down.shape[-1] > 1]
    return {"conv_dim": str(conv[0].rank), "conv_alpha": str(conv[0].alpha)} if conv else {}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def build_metadata(adapter, info: TrainingInfo) -> dict:
    """All metadata for an adapter, without the hash (that needs the final tensor bytes)."""
    family = adapter.family
    rank, alpha = adapter.common_rank_alpha()
    now = time.time()
    finished = info.finished_at or now
    res = info.resolution
    meta = {
        "ss_base_model_version": BASE_MODEL_VERSION[family],
        "ss_v2": str(family in ("sd2", "sd2-v")),
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": _number(alpha),
        "ss_network_args": json.dumps(_network_args(adapter)),
        "ss_output_name": info.output_name,
        "ss_sd_model_name": info.base_model_name,
        "ss_resolution": f"({res}, {res})",
        "ss_clip_skip": str(info.clip_skip) if info.clip_skip else "None",
        "ss_steps": str(info.steps),
        "ss_epoch": str(info.epoch),
        "ss_training_started_at": str(info.started_at or finished),
        "ss_training_finished_at": str(finished),
        "ss_tag_frequency": json.dumps(info.tag_frequency),
        "ss_dataset_dirs": json.dumps(info.dataset_dirs),
        "ss_bucket_info": json.dumps({"buckets": {"0": {"resolution": [res, res], "count": info.num_images}},
                                      "mean_img_ar_error": 0.0}),
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": ARCHITECTURE[family],
        "modelspec.implementation": IMPLEMENTATION.get(family, "diffusers"),
        "modelspec.title": info.output_name,
        "modelspec.resolution": f"{res}x{res}",
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(finished)),
        "modelspec.prediction_type": "v" if family == "sd2-v" else "epsilon",
    }
    if info.trigger_words:
        meta["modelspec.trigger_phrase"] = ", ".join(info.trigger_words)
        meta["ss_trigger_words"] = json.dumps(list(info.trigger_words))
    return meta


def family_from_metadata(metadata: dict) -> str | None:
    """Family named by ss_base_model_version, modelspec.architecture or ss_v2; None if none does."""
    if metadata.get("ss_base_model_version") in FAMILY_OF_VERSION:
        return FAMILY_OF_VERSION[metadata["ss_base_model_version"]]
    if metadata.get("modelspec.architecture") in FAMILY_OF_ARCHITECTURE:
        return FAMILY_OF_ARCHITECTURE[metadata["modelspec.architecture"]]
    if metadata.get("ss_v2") == "True":
        return "sd2"
    return None


def tensor_bytes_hash(file_bytes: bytes) -> str:
    """SHA-256 of the bytes after the 8-byte header length and the JSON header (A1111's sshs hash)."""
    header_length = int.from_bytes(file_bytes[:8], "little")
    return hashlib.sha256(memoryview(file_bytes)[8 + header_length :]).hexdigest()


def expected_metadata(family: str) -> dict:
    """The values check (c) requires per family."""
    return {
        "ss_base_model_version": BASE_MODEL_VERSION[family],
        "ss_v2": str(family in ("sd2", "sd2-v")),
        "ss_network_module": "networks.lora",
        "modelspec.sai_model_spec": "1.0.1",
        "modelspec.architecture": ARCHITECTURE[family],
        "modelspec.prediction_type": "v" if family == "sd2-v" else "epsilon",
    }
