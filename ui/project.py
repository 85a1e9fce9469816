"""A project folder: its config, its images with captions, its runs. Plain file work, no GUI.

<project>/project.toml   the training config the page edits (full, validated)
<project>/images/        training images and same-name .txt captions
<project>/runs/          one folder per training run
"""
from __future__ import annotations

import hashlib
import re
import shutil
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sdlora.config import TrainConfig, dump_toml, from_dict, load_config, to_dict
from sdlora.data.scan import IMAGE_EXTENSIONS
from sdlora.errors import SdloraError
from sdlora.fsutil import atomic_write_text

_UNSAFE = re.compile(r"[^\w.-]+", re.UNICODE)


class ProjectError(SdloraError):
    """A project operation the user asked for cannot be done."""


@dataclass
class Project:
    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "project.toml"

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    # --- config -----------------------------------------------------------------------------
    def load_config(self) -> TrainConfig:
        return load_config(self.config_path)

    def save_config(self, cfg: TrainConfig) -> None:
        cfg.data.path = str(self.images)  # the project's images are its dataset
        from_dict(to_dict(cfg))  # validate before writing
        atomic_write_text(self.config_path, dump_toml(cfg))

    # --- images and captions ----------------------------------------------------------------
    def image_files(self) -> list[Path]:
        if not self.images.is_dir():
            return []
        return sorted(p for p in self.images.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)

    def image_path(self, name: str) -> Path:
        """The image called `name` inside images/, refusing anything that points elsewhere."""
        path = (self.images / Path(name).name).resolve()
        if path.parent != self.images.resolve() or not path.is_file():
            raise ProjectError(f"No image named {name!r} in this project.")
        return path

    def caption_path(self, image_name: str) -> Path:
        return self.image_path(image_name).with_suffix(".txt")

    def read_caption(self, image_name: str) -> str:
        path = self.caption_path(image_name)
        return path.read_text(encoding="utf-8").strip() if path.is_file() else ""

    def write_caption(self, image_name: str, caption: str) -> Path:
        path = self.caption_path(image_name)
        atomic_write_text(path, caption.strip() + "\n")
        return path

    def add_image(self, source: Path, original_name: str | None = None) -> Path | None:
        """Copy an image in under a safe, unused name; returns None when the same bytes are already there."""
        source = Path(source)
        name = safe_file_name(original_name or source.name)
        if Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
            raise ProjectError(
                f"{original_name or source.name!r} is not an image sdlora trains on ({', '.join(IMAGE_EXTENSIONS)})."
            )
        self.images.mkdir(parents=True, exist_ok=True)
        digest = _file_hash(source)
        if any(_file_hash(p) == digest for p in self.image_files()):
            return None
        target = _unused_path(self.images / name)
        shutil.copyfile(source, target)
        caption = source.with_suffix(".txt")
        if caption.is_file() and not target.with_suffix(".txt").exists():
            shutil.copyfile(caption, target.with_suffix(".txt"))
        return target

    def import_folder(self, folder: Path) -> list[Path]:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise ProjectError(f"Folder not found: {folder}")
        added = [self.add_image(p) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS]
        return [p for p in added if p is not None]

    # --- bulk caption tools -----------------------------------------------------------------
    def captions(self) -> dict[str, str]:
        return {p.name: self.read_caption(p.name) for p in self.image_files()}

    def bulk_edit(self, edit) -> int:
        """Apply `edit(caption) -> caption` to every caption; returns how many changed."""
        changed = 0
        for name, caption in self.captions().items():
            new = edit(caption)
            if new != caption:
                self.write_caption(name, new)
                changed += 1
        return changed

    def tag_frequency(self) -> list[tuple[str, int]]:
        counts = Counter(tag for caption in self.captions().values() for tag in split_tags(caption))
        return counts.most_common()


def split_tags(caption: str) -> list[str]:
    return [t.strip() for t in caption.split(",") if t.strip()]


def add_trigger_word(caption: str, trigger: str) -> str:
    trigger = trigger.strip()
    if not trigger or trigger in split_tags(caption):
        return caption
    return f"{trigger}, {caption}" if caption else trigger


def strip_tags(caption: str, tags: list[str]) -> str:
    drop = {t.strip() for t in tags if t.strip()}
    return ", ".join(t for t in split_tags(caption) if t not in drop)


def safe_file_name(name: str) -> str:
    """Only the last path component, with separators, traversal and odd characters removed."""
    name = unicodedata.normalize("NFC", name.replace("\\", "/").split("/")[-1])
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    stem = _UNSAFE.sub("_", stem).strip("._") or "image"
    suffix = _UNSAFE.sub("", suffix).lower()
    return f"{stem[:120]}.{suffix}" if suffix else stem[:120]


def _unused_path(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def _file_hash(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


NEW_PROJECT_PRESET = "sd15-character"  # a real recipe: the user picks the base model, as in kohya's GUI


def open_project(root: Path, preset: str = NEW_PROJECT_PRESET) -> Project:
    """Open a project folder, creating it (with the preset's config) when it has no project.toml."""
    project = Project(Path(root).expanduser().resolve())
    if not project.config_path.is_file():
        project.root.mkdir(parents=True, exist_ok=True)
        project.images.mkdir(exist_ok=True)
        project.save_config(load_config(preset=preset))
    return project


DEMO_PRESET = "demo-concept"


def demo_project(home: Path) -> Project:
    """The built-in demo: the pretrained shapes-world model (builtin:shapes-sd15) and 12 images of a
    shape it never saw (a cross, captioned 'sks'), with the demo-concept preset: its previews show
    the cross appear within minutes on CPU."""
    from sdlora.demo.shapes import DEMO_DATASETS, write_dataset

    root = Path(home) / "projects" / "demo"
    fresh = not (root / "project.toml").is_file()
    project = open_project(root, preset=DEMO_PRESET)
    if fresh and not project.image_files():
        write_dataset(project.images, DEMO_DATASETS["demo-concept"])
    return project
