"""Preview images: the same diffusers pipeline and scheduler a user runs for inference.

During training the LoRA is live in the UNet (strength 1); `render_strength_sweep` renders a saved
adapter at several strengths. Sampling uses its own seeded generators and eval mode, so it never
touches the training RNG stream or dropout state.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import ConfigError
from .fsutil import atomic_path

SAMPLERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
}
_FLAGS = {"--n": "negative_prompt", "--s": "steps", "--l": "guidance_scale", "--d": "seed", "--w": "width",
          "--h": "height", "--sampler": "sampler"}


@dataclass(frozen=True)
class PreviewPrompt:
    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    seed: int
    width: int
    height: int
    sampler: str

    def settings(self) -> dict:
        return dict(self.__dict__)


def parse_prompts(sample_cfg, resolution: int) -> list[PreviewPrompt]:
    """sample.prompts with section defaults, each line's `--n/--s/--l/--d/--w/--h/--sampler` applied."""
    size = sample_cfg.size or resolution
    result = []
    for index, line in enumerate(sample_cfg.prompts):
        base = PreviewPrompt("", sample_cfg.negative_prompt, sample_cfg.steps, sample_cfg.guidance_scale,
                             sample_cfg.seed + index, size, size, sample_cfg.sampler)
        result.append(_apply_flags(base, line))
    return result


def _apply_flags(base: PreviewPrompt, line: str) -> PreviewPrompt:
    text, _, rest = line.partition(" --")
    values: dict = {"prompt": text.strip()}
    tokens = shlex.split("--" + rest) if rest else []
    index = 0
    while index < len(tokens):
        flag = tokens[index]
        if flag not in _FLAGS:
            raise ConfigError(f"sample.prompts: unknown option {flag!r} in {line!r}; use {', '.join(_FLAGS)}.")
        words = []
        index += 1
        while index < len(tokens) and tokens[index] not in _FLAGS:
            words.append(tokens[index])
            index += 1
        values[_FLAGS[flag]] = _typed(_FLAGS[flag], " ".join(words), line)
    return replace(base, **values)


def _typed(name: str, raw: str, line: str):
    kinds = {"steps": int, "seed": int, "width": int, "height": int, "guidance_scale": float}
    try:
        value = kinds.get(name, str)(raw)
    except ValueError:
        raise ConfigError(f"sample.prompts: {name} = {raw!r} is not a number in {line!r}.") from None
    if name in ("width", "height") and (value <= 0 or value % 8):
        raise ConfigError(f"sample.prompts: {name} = {value} must be a positive multiple of 8 in {line!r}.")
    if name == "sampler" and value not in ("default", *SAMPLERS):
        raise ConfigError(f"sample.prompts: sampler {value!r} unknown; choose default, {', '.join(SAMPLERS)}.")
    return value


def model_scheduler(folder: Path, family: str = "sd15"):
    """The scheduler saved with the model: what `DiffusionPipeline.from_pretrained` would use."""
    import diffusers
    from diffusers import DiffusionPipeline

    if Path(folder).is_file():  # a single-file checkpoint: its scheduler from metadata / shipped config
        from .models.single_file import load_scheduler

        return load_scheduler(folder, family)
    class_name = DiffusionPipeline.load_config(folder)["scheduler"][1]
    return getattr(diffusers, class_name).from_pretrained(folder, subfolder="scheduler")


def scheduler_for(name: str, default_scheduler):
    if name == "default":
        return default_scheduler
    import diffusers

    class_name, extra = SAMPLERS[name]
    return getattr(diffusers, class_name).from_config(default_scheduler.config, **extra)


def inference_pipeline(model):
    """A diffusers pipeline (SD or SDXL) over the (LoRA-carrying) components, with the model's own scheduler."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if getattr(model, "text_encoder_2", None) is not None:
        pipe = StableDiffusionXLPipeline(
            vae=model.vae, text_encoder=model.text_encoder, text_encoder_2=model.text_encoder_2,
            tokenizer=model.tokenizer, tokenizer_2=model.tokenizer_2, unet=model.unet,
            scheduler=model_scheduler(model.folder, model.family),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe
    pipe = StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=model_scheduler(model.folder, model.family), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render_one(pipe, preview: PreviewPrompt, default_scheduler, autocast=None, clip_skip: int = 1):
    """One image; clip_skip counts as model.clip_skip does (1 = none)."""
    import contextlib

    import torch

    pipe.scheduler = scheduler_for(preview.sampler, default_scheduler)
    with torch.no_grad(), (autocast or contextlib.nullcontext()):
        return pipe(
            **_prompt_arguments(pipe, preview, clip_skip),
            num_inference_steps=preview.steps,
            guidance_scale=preview.guidance_scale,
            height=preview.height,
            width=preview.width,
            generator=torch.Generator().manual_seed(preview.seed),
        ).images[0]


def _prompt_arguments(pipe, preview: PreviewPrompt, clip_skip: int) -> dict:
    """Prompts as text, or with clip skip on SD1/SD2 as embeddings from sdlora's own encoder:
    diffusers 0.42's SD clip-skip path needs a text_model attribute transformers 5 removed."""
    from .models.prompts import PromptEncoder, diffusers_clip_skip

    text = {"prompt": preview.prompt, "negative_prompt": preview.negative_prompt or None}
    if clip_skip == 1:
        return text
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL: diffusers indexes hidden states only
        return {**text, "clip_skip": diffusers_clip_skip(clip_skip)}
    encode = PromptEncoder("sd", [pipe.tokenizer], [pipe.text_encoder], clip_skip)
    return {"prompt_embeds": encode([preview.prompt]).hidden,
            "negative_prompt_embeds": encode([preview.negative_prompt]).hidden}


def render_previews(model, cfg, step: int, folder: Path, accelerator=None) -> list[Path]:
    """One PNG per prompt (settings in its text chunk) plus a grid; returns all written paths."""
    from .train.offload import encoders_beside_unet

    with encoders_beside_unet(model):  # train.offload_encoders keeps them on the CPU between previews
        return _render_previews(model, cfg, step, folder, accelerator)


def _render_previews(model, cfg, step: int, folder: Path, accelerator) -> list[Path]:
    previews = parse_prompts(cfg.sample, cfg.data.resolution)
    pipe = inference_pipeline(model)
    default_scheduler = pipe.scheduler
    networks = [model.unet, *model.text_encoders]
    was_training = [m.training for m in networks]
    for module in networks:
        module.eval()
    images, paths = [], []
    try:
        for index, preview in enumerate(previews):
            autocast = accelerator.autocast() if accelerator is not None else None
            image = render_one(pipe, preview, default_scheduler, autocast, cfg.model.clip_skip)
            images.append(image)
            settings = {**preview.settings(), "step": step, "scheduler": type(pipe.scheduler).__name__}
            paths.append(save_png(image, folder / f"step{step:06d}-{index:02d}.png", settings))
        paths.append(save_png(image_grid(images), folder / f"step{step:06d}-grid.png", {"step": step}))
    finally:
        for module, mode in zip(networks, was_training):
            module.train(mode)
    return paths


def save_png(image, path: Path, settings: dict) -> Path:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", json.dumps(settings, ensure_ascii=False))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
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


def render_strength_sweep(base: str, adapter: Path, previews: list[PreviewPrompt], strengths: list[float]):
    """A grid: one row per prompt, one column per LoRA strength, through diffusers' own LoRA loading."""
    from diffusers import DiffusionPipeline

    from .models.loading import resolve_model_path

    folder = resolve_model_path(base)
    if folder.is_file():
        from .models.single_file import load_single_file

        pipe = load_single_file(folder).pipeline()
    else:  # the pipeline class saved with the model (SD or SDXL)
        pipe = DiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    adapter = Path(adapter)
    pipe.load_lora_weights(str(adapter.parent), weight_name=adapter.name, adapter_name="sweep")
    default_scheduler = pipe.scheduler
    images = []
    for preview in previews:
        for strength in strengths:
            pipe.set_adapters(["sweep"], adapter_weights=[strength])
            images.append(render_one(pipe, preview, default_scheduler))
    return image_grid(images, columns=len(strengths))


def adapter_base_model(adapter: Path) -> str | None:
    """The base model a file was trained on, from its metadata (sdlora writes ss_sd_model_name)."""
    from safetensors import safe_open

    with safe_open(str(adapter), "pt") as handle:
        return (handle.metadata() or {}).get("ss_sd_model_name")
