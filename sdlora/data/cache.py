"""Caches of VAE latent distributions (memory or disk) and text-encoder outputs (memory).

Latents: the cache stores the VAE posterior's mean and std per (file content hash, bucket, crop,
flip, background, VAE identity). The latent is drawn from them at train time with the training
generator, exactly as without the cache, so 'sample' latents stay random per step and a cached
run equals an uncached one. A changed image or setting changes the key: the stale entry is
simply never read again.

Text: outputs are cached per distinct caption string as it is drawn (after trigger word,
shuffle and dropout), so shuffled/dropped captions stay exact. The cache is bounded (LRU).
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

LATENT_PIPELINE_VERSION = 1  # bump when image loading changes what a cached entry means
TEXT_CACHE_MAX_ENTRIES = 2048


def vae_fingerprint(vae) -> str:
    """Identity of a VAE: its config, dtype and every weight's bytes."""
    digest = hashlib.sha256(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(dtype=_byte_dtype()).numpy().tobytes())
    return digest.hexdigest()[:32]


def _byte_dtype():
    import torch

    return torch.uint8


def latent_key(item, background: str, vae_id: str) -> str:
    crop = item.crop
    parts = [
        LATENT_PIPELINE_VERSION, item.example.content_hash, list(crop.bucket), list(crop.resized),
        crop.left, crop.top, bool(item.flip), background, vae_id,
    ]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


class LatentCache:
    """(mean, std) tensors by key, kept in memory or as one safetensors file per key on disk."""

    def __init__(self, mode: str, folder: Path | None = None):
        self.mode = mode
        self.folder = Path(folder) if folder else None
        self.memory: dict = {}
        self.hits = 0
        self.misses = 0
        if mode == "disk":
            self.folder.mkdir(parents=True, exist_ok=True)

    def _file(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, key: str):
        entry = self.memory.get(key) if self.mode == "memory" else self._read(key)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def _read(self, key: str):
        from safetensors.torch import load_file

        path = self._file(key)
        if not path.is_file():
            return None
        try:
            tensors = load_file(path)
        except Exception:  # noqa: BLE001 -- safetensors raises its own error type; a damaged entry is a miss
            return None
        return tensors["mean"], tensors["std"]

    def put(self, key: str, mean, std) -> None:
        mean, std = mean.detach().cpu().clone(), std.detach().cpu().clone()
        if self.mode == "memory":
            self.memory[key] = (mean, std)
            return
        from safetensors.torch import save_file

        from ..fsutil import atomic_write

        path = self._file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: save_file({"mean": mean.contiguous(), "std": std.contiguous()}, str(tmp)))


class TextCache:
    """Text-encoder output per exact caption string, least recently used dropped first."""

    def __init__(self, max_entries: int = TEXT_CACHE_MAX_ENTRIES):
        self.entries: OrderedDict = OrderedDict()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0

    def get(self, caption: str):
        if caption in self.entries:
            self.entries.move_to_end(caption)
            self.hits += 1
            return self.entries[caption]
        self.misses += 1
        return None

    def put(self, caption: str, embeddings) -> None:
        """Store `embeddings` as given (the caller detaches them from any graph)."""
        self.entries[caption] = embeddings
        self.entries.move_to_end(caption)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
