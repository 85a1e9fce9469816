"""Compatibility names for code written against the first minimal dataset (ui/, older tests).

New code: scan.py (records), stream.py (examples, batches), plan.py (the dry-run plan).
"""
from __future__ import annotations

from .scan import IMAGE_EXTENSIONS, resolve_data_path, scan_for_training
from .stream import Example, build_examples

__all__ = ["IMAGE_EXTENSIONS", "Example", "resolve_data_path", "scan_folder"]


def scan_folder(data_cfg) -> list[Example]:
    """Every image of the config's datasets with caption, size and bucket (DataError if unusable)."""
    return build_examples(scan_for_training(data_cfg), data_cfg)
