"""Find training images and their captions: flat folders, kohya `N_name` sub-folders, several datasets.

Scanning reads file names, caption files and file hashes only; it never decodes an image (lint does).
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
BUILTIN_PREFIX = "builtin:"
REPEAT_FOLDER = re.compile(r"^(\d+)_(.+)$")  # kohya: "10_mychar" = 10 repeats of the images inside


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset with every per-dataset setting resolved (entry value, else the [data] value)."""

    index: int
    folder: Path
    repeats: int
    caption_extension: str
    trigger_word: str
    resolution: int
    missing_caption: str
    default_caption: str


@dataclass(frozen=True)
class ImageRecord:
    """One image file with its raw caption (before shuffle/dropout) and where that caption came from."""

    path: Path
    caption: str | None  # None only when missing and missing_caption = 'error'
    caption_source: str  # 'file', 'default', 'filename', 'empty' or 'missing'
    repeats: int
    dataset: DatasetSpec

    @property
    def trigger_word(self) -> str:
        return self.dataset.trigger_word


def resolve_data_path(path: str, key: str = "data.path") -> Path:
    if path.startswith(BUILTIN_PREFIX):
        from ..demo.shapes import builtin_dataset_path

        return builtin_dataset_path(path[len(BUILTIN_PREFIX) :])
    if not path:
        raise DataError(f"{key} is empty: set it to the folder that holds your training images.")
    folder = Path(path).expanduser()
    if not folder.exists():
        raise DataError(f"Data folder not found: {folder}. Set {key} to the folder with your training images.")
    if not folder.is_dir():
        raise DataError(f"{key} must be a folder of images, but {folder} is a file.")
    return folder


def dataset_specs(data_cfg) -> list[DatasetSpec]:
    """data.datasets when given, else the single data.path folder, with settings resolved."""
    if not data_cfg.datasets:
        folder = resolve_data_path(data_cfg.path)
        return [
            DatasetSpec(0, folder, data_cfg.repeats, data_cfg.caption_extension, data_cfg.trigger_word,
                        data_cfg.resolution, data_cfg.missing_caption, data_cfg.default_caption)
        ]
    specs = []
    for i, entry in enumerate(data_cfg.datasets):
        folder = resolve_data_path(entry.path, f"data.datasets[{i}].path")
        specs.append(
            DatasetSpec(
                i, folder, entry.repeats, entry.caption_extension, entry.trigger_word or data_cfg.trigger_word,
                entry.resolution or data_cfg.resolution, entry.missing_caption or data_cfg.missing_caption,
                entry.default_caption or data_cfg.default_caption,
            )
        )
    return specs


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def folders_with_repeats(spec: DatasetSpec) -> list[tuple[Path, int]]:
    """The folder itself (spec.repeats) plus every `N_name` sub-folder (N repeats), sorted by name."""
    found = [(spec.folder, spec.repeats)]
    for sub in sorted(p for p in spec.folder.iterdir() if p.is_dir()):
        match = REPEAT_FOLDER.match(sub.name)
        if match and int(match.group(1)) > 0:
            found.append((sub, int(match.group(1))))
    return found


def caption_for(image_path: Path, spec: DatasetSpec) -> tuple[str | None, str]:
    """(caption, source): the side file, else the configured fallback; never silently empty."""
    side_file = image_path.with_suffix(spec.caption_extension)
    if side_file.is_file():
        return side_file.read_text(encoding="utf-8", errors="replace").strip(), "file"
    if spec.missing_caption == "default":
        return spec.default_caption, "default"
    if spec.missing_caption == "filename":
        return image_path.stem.replace("_", " ").strip(), "filename"
    if spec.missing_caption == "empty":
        return "", "empty"
    return None, "missing"


def scan_dataset(spec: DatasetSpec) -> list[ImageRecord]:
    records = []
    for folder, repeats in folders_with_repeats(spec):
        for path in image_files(folder):
            caption, source = caption_for(path, spec)
            records.append(ImageRecord(path, caption, source, repeats, spec))
    return records


def scan_all(data_cfg) -> list[ImageRecord]:
    """Every image of every dataset, without checking captions (lint reports what is missing)."""
    records = []
    for spec in dataset_specs(data_cfg):
        records.extend(scan_dataset(spec))
    return records


def scan_for_training(data_cfg) -> list[ImageRecord]:
    """Like scan_all, but raise DataError for no images or missing captions."""
    records = scan_all(data_cfg)
    if not records:
        folders = ", ".join(str(s.folder) for s in dataset_specs(data_cfg))
        raise DataError(
            f"No images in {folders} (looked for {', '.join(IMAGE_EXTENSIONS)}). Put your training images there."
        )
    missing = [r.path.name for r in records if r.caption is None]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise DataError(
            f"{len(missing)} image(s) have no caption file: {shown}. Add caption files, or set "
            "data.missing_caption = 'default' (with data.default_caption), 'filename' or 'empty'."
        )
    return records


def file_hash(path: Path) -> str:
    """sha256 of the file's bytes: the identity of an image for duplicates and caches."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
