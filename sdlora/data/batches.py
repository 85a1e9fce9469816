"""Compatibility names: the batch stream lives in stream.py."""
from .stream import Batch, BatchStream

__all__ = ["Batch", "BatchStream"]
