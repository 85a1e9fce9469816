"""Which Stable Diffusion family a diffusers folder holds, read from its config files only
(a single-file checkpoint: from its key names, see models.single_file).

The signals are structural, so they hold for tiny test models as for real ones:
SDXL conditions on size/crop ids ('text_time'); SD2's OpenCLIP text encoder uses 'gelu' where
SD1's OpenAI CLIP uses 'quick_gelu'; v-prediction comes from the scheduler config.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelError

FAMILY_NAMES = {
    "sd15": "Stable Diffusion 1.x",
    "sd2": "Stable Diffusion 2.x (epsilon)",
    "sd2-v": "Stable Diffusion 2.x 768-v (v-prediction)",
    "sdxl": "Stable Diffusion XL",
}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path.parent} is missing {path.name}: not a complete diffusers model folder.") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path} is not valid JSON ({exc}); the model folder is damaged.") from None


def detect_family(folder: Path) -> str:
    folder = Path(folder)
    if folder.is_file():  # a single-file checkpoint: from its key names (and metadata)
        from .single_file import peek_family

        return peek_family(folder)
    index = _read_json(folder / "model_index.json")
    unet = _read_json(folder / "unet" / "config.json")
    if unet.get("addition_embed_type") == "text_time" or "text_encoder_2" in index:
        return "sdxl"
    text_encoder = _read_json(folder / "text_encoder" / "config.json")
    if text_encoder.get("hidden_act") == "gelu":
        return "sd2-v" if prediction_type_of(folder) == "v_prediction" else "sd2"
    return "sd15"


def prediction_type_of(folder: Path) -> str:
    if Path(folder).is_file():
        return "v_prediction" if detect_family(folder) == "sd2-v" else "epsilon"
    scheduler = _read_json(Path(folder) / "scheduler" / "scheduler_config.json")
    return scheduler.get("prediction_type", "epsilon")
