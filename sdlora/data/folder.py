"""Find training images and their captions in a folder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BUILTIN_PREFIX = "builtin:"


@dataclass(frozen=True)
class Example:
    image_path: Path
    caption: str


def resolve_data_path(path: str) -> Path:
    if path.startswith(BUILTIN_PREFIX):
        from ..demo.shapes import builtin_dataset_path

        return builtin_dataset_path(path[len(BUILTIN_PREFIX) :])
    if not path:
        raise DataError("data.path is empty: set it to the folder that holds your training images.")
    folder = Path(path).expanduser()
    if not folder.exists():
        raise DataError(f"Data folder not found: {folder}. Set data.path to the folder with your training images.")
    if not folder.is_dir():
        raise DataError(f"data.path must be a folder of images, but {folder} is a file.")
    return folder


def scan_folder(data_cfg) -> list[Example]:
    """Every image in data.path (sorted by name) with its caption, per data.missing_caption."""
    folder = resolve_data_path(data_cfg.path)
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DataError(
            f"No images in {folder} (looked for {', '.join(IMAGE_EXTENSIONS)}). Put your training images there."
        )
    examples = [Example(p, caption_for(p, data_cfg)) for p in images]
    missing = [e.image_path.name for e in examples if e.caption is None]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(
            f"{len(missing)} image(s) in {folder} have no {data_cfg.caption_extension} caption: {shown}. "
            "Add caption files, or set data.missing_caption = 'default' (with data.default_caption) "
            "or 'filename'."
        )
    return examples


def caption_for(image_path: Path, data_cfg) -> str | None:
    side_file = image_path.with_suffix(data_cfg.caption_extension)
    if side_file.is_file():
        return side_file.read_text(encoding="utf-8").strip()
    if data_cfg.missing_caption == "default":
        return data_cfg.default_caption
    if data_cfg.missing_caption == "filename":
        return image_path.stem.replace("_", " ")
    return None
