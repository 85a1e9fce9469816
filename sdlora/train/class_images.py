"""Class images for DreamBooth prior preservation: a given folder, or generated once by the base model.

Generated images go to SDLORA_HOME/class-images/<key>, the key being the model and every generation
setting, so a later run with the same model, prompt and size reuses them and generates only what
is missing. A folder the user gives is only read, never written to.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..models.loading import sdlora_home

GENERATION_VERSION = 1


@dataclass
class ClassImageFolder:
    folder: Path
    generated: int
    reused: int


def generation_settings(cfg, model_folder: Path) -> dict:
    db = cfg.dreambooth
    model_path = Path(model_folder)  # a diffusers folder, or a single-file checkpoint
    weights = [model_path] if model_path.is_file() else sorted((model_path / "unet").glob("*.safetensors"))
    identity = [(str(p.resolve()), p.stat().st_size, int(p.stat().st_mtime)) for p in weights]
    return {
        "version": GENERATION_VERSION, "model": str(Path(model_folder).resolve()), "weights": identity,
        "prompt": db.class_prompt, "negative_prompt": db.class_negative_prompt, "size": cfg.data.resolution,
        "steps": db.class_generation_steps, "guidance_scale": db.class_guidance_scale,
        **({"clip_skip": cfg.model.clip_skip} if cfg.model.clip_skip > 1 else {}),  # older keys stay valid
    }


def generated_folder(cfg, model_folder: Path) -> Path:
    key = hashlib.sha256(json.dumps(generation_settings(cfg, model_folder), sort_keys=True).encode()).hexdigest()
    return sdlora_home() / "class-images" / key[:20]


def existing_images(folder: Path) -> list[Path]:
    from ..data.scan import IMAGE_EXTENSIONS

    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def given_class_folder(class_data_dir: str) -> Path:
    """dreambooth.class_data_dir as a folder; 'builtin:<name>' is a built-in dataset (e.g. demo-world)."""
    from ..data.scan import BUILTIN_PREFIX

    if class_data_dir.startswith(BUILTIN_PREFIX):
        from ..demo.shapes import builtin_dataset_path

        return builtin_dataset_path(class_data_dir[len(BUILTIN_PREFIX):])
    return Path(class_data_dir).expanduser()


def prepare_class_images(cfg, base) -> ClassImageFolder:
    """The folder to draw class images from; generates the missing ones when sdlora owns the folder."""
    db = cfg.dreambooth
    if db.class_data_dir:
        folder = given_class_folder(db.class_data_dir)
        found = existing_images(folder)
        if not found:
            raise DataError(f"dreambooth.class_data_dir = {folder} has no images; add class images or clear the "
                            "option to let sdlora generate them.")
        return ClassImageFolder(folder, 0, min(len(found), db.num_class_images))
    folder = generated_folder(cfg, base.folder)
    found = existing_images(folder)
    missing = range(len(found), db.num_class_images)
    if missing:
        generate_class_images(cfg, base, folder, missing)
    return ClassImageFolder(folder, len(missing), min(len(found), db.num_class_images))


def generate_class_images(cfg, base, folder: Path, indices) -> None:
    """Render class images with the plain base model (before LoRA is added), one seed per index."""
    from ..fsutil import atomic_write_text
    from ..sample import PreviewPrompt, inference_pipeline, render_one, save_png

    db = cfg.dreambooth
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "settings.json", json.dumps(generation_settings(cfg, base.folder), indent=2))
    pipe = inference_pipeline(base)
    size = cfg.data.resolution
    for index in indices:
        prompt = PreviewPrompt(db.class_prompt, db.class_negative_prompt, db.class_generation_steps,
                               db.class_guidance_scale, index, size, size, "default")
        image = render_one(pipe, prompt, pipe.scheduler, clip_skip=cfg.model.clip_skip)
        save_png(image, folder / f"class-{index:05d}.png", prompt.settings())
        atomic_write_text(folder / f"class-{index:05d}.txt", db.class_prompt + "\n")
