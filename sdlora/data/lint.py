"""Check a dataset before training: errors stop the run with a report, warnings are shown.

Lint only reads: nothing in the user's folders is modified, moved or deleted.
"""
from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from .captions import with_trigger_word
from .scan import IMAGE_EXTENSIONS, ImageRecord, dataset_specs, file_hash, folders_with_repeats, scan_all

MAX_CAPTION_TOKENS = 75  # CLIP's 77 positions minus start and end tokens
FORMAT_EXTENSIONS = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg"), "WEBP": (".webp",), "BMP": (".bmp",)}
IGNORED_IMAGE_EXTENSIONS = (".gif", ".tif", ".tiff", ".avif", ".heic", ".jxl")


@dataclass(frozen=True)
class Issue:
    level: str  # 'error' or 'warning'
    kind: str
    path: Path | None
    message: str

    def line(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.level} [{self.kind}] {where}{self.message}"


@dataclass
class LintReport:
    issues: list = field(default_factory=list)
    images_checked: int = 0

    def add(self, level: str, kind: str, path: Path | None, message: str) -> None:
        self.issues.append(Issue(level, kind, path, message))

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.level == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.level == "warning"]

    def kinds(self, level: str | None = None) -> dict[str, int]:
        counts: dict = defaultdict(int)
        for issue in self.issues:
            if level is None or issue.level == level:
                counts[issue.kind] += 1
        return dict(sorted(counts.items()))

    def warning_lines(self) -> list[str]:
        return [i.line() for i in self.warnings]

    def format(self) -> str:
        lines = [i.line() for i in self.errors + self.warnings]
        for level in ("error", "warning"):
            counts = self.kinds(level)
            if counts:
                lines.append(f"{level}s: " + ", ".join(f"{kind} {n} file(s)" for kind, n in counts.items()))
        counts = self.kinds("error")
        if "missing-caption" in counts:
            lines.append(f"{counts['missing-caption']} image(s) have no caption: add caption files, or set "
                         "data.missing_caption = 'default' (with data.default_caption), 'filename' or 'empty'.")
        summary = f"{self.images_checked} image(s) checked: {len(self.errors)} error(s), {len(self.warnings)} warning(s)."
        return "\n".join(lines + [summary])

    def raise_for_errors(self) -> None:
        if self.errors:
            raise DataError(
                "the dataset has problems that stop training (nothing was changed in your folders):\n"
                + self.format()
            )


@functools.lru_cache(maxsize=1)
def _tokenizer():
    from ..models.tokenizer import clip_tokenizer

    return clip_tokenizer(max_length=1 << 20)  # count every token; no truncation warning


def caption_token_count(caption: str) -> int:
    return len(_tokenizer()(caption).input_ids) - 2


def check_image_file(record: ImageRecord, report: LintReport) -> tuple[int, int] | None:
    """Decode the image fully; return its upright size, or None after reporting why it is unusable."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = record.path
    if path.stat().st_size == 0:
        report.add("error", "zero-byte", path, "empty file (0 bytes); remove it or replace it with the image.")
        return None
    try:
        with Image.open(path) as image:
            image_format = image.format
            image.load()
            size = ImageOps.exif_transpose(image).size
    except UnidentifiedImageError:
        report.add("error", "not-an-image", path, "not an image file despite its extension; remove or replace it.")
        return None
    except (OSError, ValueError, SyntaxError) as exc:
        report.add("error", "corrupt", path, f"cannot be decoded ({exc}); re-export or remove it.")
        return None
    expected = FORMAT_EXTENSIONS.get(image_format, ())
    if expected and path.suffix.lower() not in expected:
        report.add("warning", "wrong-extension", path, f"is a {image_format} file with a {path.suffix} extension.")
    return size


def check_caption(record: ImageRecord, report: LintReport) -> None:
    path = record.path
    if record.caption_source == "missing":
        report.add("error", "missing-caption", path,
                   f"no {record.dataset.caption_extension} caption; add one or set data.missing_caption.")
        return
    if record.caption_source == "file" and not record.caption:
        report.add("warning", "empty-caption", path.with_suffix(record.dataset.caption_extension),
                   "caption file is empty: the image trains with no text (or only the trigger word).")
    caption = with_trigger_word(record.caption or "", record.trigger_word)
    tokens = caption_token_count(caption)
    if tokens > MAX_CAPTION_TOKENS:
        report.add("warning", "long-caption", path,
                   f"caption has {tokens} tokens; the text encoder keeps {MAX_CAPTION_TOKENS}, the rest is cut off.")


def check_record(record: ImageRecord, report: LintReport, hashes: dict) -> None:
    path = record.path
    if not path.name.isascii():
        report.add("warning", "unicode-name", path, "non-ASCII file name; some tools and file systems mangle it.")
    size = check_image_file(record, report)
    check_caption(record, report)
    if size is None:
        return
    hashes[file_hash(path)].append(path)
    base = record.dataset.resolution
    if size[0] * size[1] < base * base:
        report.add("warning", "small-image", path,
                   f"{size[0]}x{size[1]} is smaller than the training resolution {base}x{base}; it will be upscaled (blurry)"
                   " unless data.no_upscale is on.")


def check_folders(data_cfg, report: LintReport) -> None:
    """Caption files without an image, and image types sdlora does not read."""
    for spec in dataset_specs(data_cfg):
        for folder, _ in folders_with_repeats(spec):
            files = [p for p in folder.iterdir() if p.is_file()]
            stems = {p.stem for p in files if p.suffix.lower() in IMAGE_EXTENSIONS}
            for p in sorted(files):
                if p.suffix == spec.caption_extension and p.stem not in stems:
                    report.add("warning", "orphan-caption", p, "caption file without an image of the same name.")
                elif p.suffix.lower() in IGNORED_IMAGE_EXTENSIONS:
                    report.add("warning", "ignored-file", p,
                               f"{p.suffix} images are not read; convert to one of {', '.join(IMAGE_EXTENSIONS)}.")


def lint_dataset(data_cfg) -> LintReport:
    """Every check on every dataset of the config."""
    report = LintReport()
    records = scan_all(data_cfg)
    if not records:
        folders = ", ".join(str(spec.folder) for spec in dataset_specs(data_cfg))
        report.add("error", "no-images", None,
                   f"No images in {folders} (looked for {', '.join(IMAGE_EXTENSIONS)}); put your training images there.")
    hashes: dict = defaultdict(list)
    for record in records:
        check_record(record, report, hashes)
    for paths in hashes.values():
        for duplicate in paths[1:]:
            report.add("warning", "duplicate", duplicate, f"same content as {paths[0]}; it is trained twice as often.")
    check_folders(data_cfg, report)
    report.images_checked = len(records)
    return report
