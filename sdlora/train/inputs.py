"""Model inputs of a batch: latents (VAE, maybe cached) and text-encoder states (maybe cached).

Cached or not, the training generator is drawn from in the same order and amount: one normal
draw of the batch's latent shape for 'sample' latents, none for 'deterministic' latents.

The frozen VAE and text encoder run one image / one caption at a time, cached or not: batched
convolutions and matmuls round differently with the batch size (about 1e-6 here), so per-item
encoding is what makes a cached value bit-identical to a fresh one, whatever batch it came from.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..data.cache import LatentCache, TextCache, latent_key, vae_fingerprint
from ..models.prompts import PromptEmbeddings


def latents_from_distribution(mean, std, generator, mode: str, scaling_factor: float) -> torch.Tensor:
    if mode == "deterministic":
        return mean * scaling_factor
    noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean.device, mean.dtype)
    return (mean + std * noise) * scaling_factor


def default_cache_dir() -> Path:
    from ..models.loading import sdlora_home

    return sdlora_home() / "cache" / "latents"


class LatentSource:
    def __init__(self, vae, data_cfg):
        self.vae = vae
        # The frozen VAE is placed once before training; diffusers' vae.device / vae.dtype walk the
        # module tree on every call (1-3 ms each on CPU), too slow to ask on every step.
        self.device, self.dtype = vae.device, vae.dtype
        self.mode = data_cfg.latents
        self.background = data_cfg.background  # part of the cache key (the batch loads with it)
        self.cache = None
        if data_cfg.cache_latents != "off":
            folder = Path(data_cfg.cache_dir) if data_cfg.cache_dir else default_cache_dir()
            self.cache = LatentCache(data_cfg.cache_latents, folder)
            self.vae_id = vae_fingerprint(vae)

    def _encode_each(self, pixels: torch.Tensor) -> list:
        """[(mean, std)] per image, each encoded on its own (see the module note). An fp32 VAE
        (model.vae_precision) runs outside the training autocast, or autocast would halve it anyway."""
        result = []
        full_precision = torch.autocast(self.device.type, enabled=False) if self.dtype == torch.float32 else None
        with full_precision or contextlib.nullcontext():
            for row in pixels.to(self.device, self.dtype):
                dist = self.vae.encode(row[None]).latent_dist
                result.append((dist.mean[0], dist.std[0]))
        return result

    def distribution(self, batch):
        """(mean, std) of the batch, from the cache where possible."""
        if self.cache is None:
            found = self._encode_each(torch.from_numpy(batch.pixels))
        else:
            found = self._cached_distribution(batch)
        mean = torch.stack([m.to(self.device, self.dtype) for m, _ in found])
        std = torch.stack([s.to(self.device, self.dtype) for _, s in found])
        return mean, std

    def _cached_distribution(self, batch) -> list:
        keys = [latent_key(item, self.background, self.vae_id) for item in batch.items]
        found = [self.cache.get(key) for key in keys]
        missing = [i for i, entry in enumerate(found) if entry is None]
        if missing:
            fresh = self._encode_each(torch.from_numpy(batch.subset(missing).pixels))
            for i, (mean, std) in zip(missing, fresh):
                self.cache.put(keys[i], mean, std)
                found[i] = (mean, std)
        return found

    @torch.no_grad()
    def latents(self, batch, generator) -> torch.Tensor:
        mean, std = self.distribution(batch)
        return latents_from_distribution(mean, std, generator, self.mode, self.vae.config.scaling_factor)


class TextSource:
    """Prompt embeddings of a batch's captions; per caption and cached while the encoders are frozen."""

    def __init__(self, encode, cache_enabled: bool, text_encoder_trained: bool):
        self.encode = encode  # a models.prompts.PromptEncoder
        self.trained = text_encoder_trained
        self.cache = TextCache() if cache_enabled and not text_encoder_trained else None

    def _encode_each(self, captions: list[str]) -> list:
        with torch.no_grad():
            return [self.encode([c]).row(0) for c in captions]

    def embeddings(self, captions: list[str]) -> PromptEmbeddings:
        if self.trained:  # the text encoder learns: batched, with gradients, never cached
            return self.encode(captions)
        if self.cache is None:
            return PromptEmbeddings.stack(self._encode_each(captions))
        found = [self.cache.get(caption) for caption in captions]
        missing = sorted({c for c, e in zip(captions, found) if e is None})
        if missing:
            fresh = dict(zip(missing, self._encode_each(missing)))
            for caption, embeddings in fresh.items():
                self.cache.put(caption, embeddings.detached())
            found = [fresh[c] if e is None else e for c, e in zip(captions, found)]
        return PromptEmbeddings.stack(found)
