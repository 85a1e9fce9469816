"""Preview images: the same diffusers pipeline and scheduler a user runs for inference, LoRA at strength 1."""
from __future__ import annotations

import json
from pathlib import Path

from .fsutil import atomic_path


def inference_pipeline(model):
    """A StableDiffusionPipeline over the (LoRA-carrying) components, with the model's own scheduler."""
    import diffusers
    from diffusers import DiffusionPipeline, StableDiffusionPipeline

    if Path(model.folder).is_file():  # a single-file checkpoint: its scheduler from metadata / shipped config
        from .models.single_file import load_scheduler

        scheduler = load_scheduler(model.folder, model.family)
    else:
        scheduler_class = DiffusionPipeline.load_config(model.folder)["scheduler"][1]
        scheduler = getattr(diffusers, scheduler_class).from_pretrained(model.folder, subfolder="scheduler")
    pipe = StableDiffusionPipeline(
        vae=model.vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=model.unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def png_info(settings: dict):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", json.dumps(settings, ensure_ascii=False))
    return info


def render_previews(model, cfg, step: int, folder: Path, accelerator=None) -> list[Path]:
    """One PNG per prompt (settings in its text chunk) plus a grid; returns all written paths."""
    import torch

    sample_cfg = cfg.sample
    size = sample_cfg.size or cfg.data.resolution
    pipe = inference_pipeline(model)
    was_training = model.unet.training, model.text_encoder.training
    model.unet.eval()
    model.text_encoder.eval()
    images, paths = [], []
    try:
        for index, prompt in enumerate(sample_cfg.prompts):
            seed = sample_cfg.seed + index
            settings = {
                "prompt": prompt,
                "negative_prompt": sample_cfg.negative_prompt,
                "seed": seed,
                "steps": sample_cfg.steps,
                "guidance_scale": sample_cfg.guidance_scale,
                "size": size,
                "scheduler": type(pipe.scheduler).__name__,
                "step": step,
            }
            autocast = accelerator.autocast() if accelerator is not None else torch.autocast("cpu", enabled=False)
            with torch.no_grad(), autocast:
                image = pipe(
                    prompt,
                    negative_prompt=sample_cfg.negative_prompt or None,
                    num_inference_steps=sample_cfg.steps,
                    guidance_scale=sample_cfg.guidance_scale,
                    height=size,
                    width=size,
                    generator=torch.Generator().manual_seed(seed),
                ).images[0]
            images.append(image)
            paths.append(_save_png(image, folder / f"step{step:06d}-{index:02d}.png", settings))
        paths.append(_save_png(image_grid(images), folder / f"step{step:06d}-grid.png", {"step": step}))
    finally:
        model.unet.train(was_training[0])
        model.text_encoder.train(was_training[1])
    return paths


def _save_png(image, path: Path, settings: dict) -> Path:
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=png_info(settings))
    return path


def image_grid(images: list, columns: int | None = None):
    from PIL import Image

    columns = columns or min(len(images), 4)
    rows = -(-len(images) // columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * width, (i // columns) * height))
    return grid
