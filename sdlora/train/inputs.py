"""Model inputs of a batch: latents (VAE, maybe cached) and text-encoder states (maybe cached).

Cached or not, the training generator is drawn from in the same order and amount: one normal
draw of the batch's latent shape for 'sample' latents, none for 'deterministic' latents.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.cache import LatentCache, TextCache, latent_key, vae_fingerprint
from .step import encode_text, tokenize


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
        self.mode = data_cfg.latents
        self.background = data_cfg.background
        self.cache = None
        if data_cfg.cache_latents != "off":
            folder = Path(data_cfg.cache_dir) if data_cfg.cache_dir else default_cache_dir()
            self.cache = LatentCache(data_cfg.cache_latents, folder)
            self.vae_id = vae_fingerprint(vae)

    def _encode(self, pixels: torch.Tensor):
        dist = self.vae.encode(pixels.to(self.vae.device, self.vae.dtype)).latent_dist
        return dist.mean, dist.std

    def distribution(self, batch):
        """(mean, std) of the batch, from the cache where possible."""
        if self.cache is None:
            return self._encode(torch.from_numpy(batch.pixels(self.background)))
        keys = [latent_key(item, self.background, self.vae_id) for item in batch.items]
        found = [self.cache.get(key) for key in keys]
        missing = [i for i, entry in enumerate(found) if entry is None]
        if missing:
            sub = type(batch)([batch.items[i] for i in missing], batch.epoch, batch.bucket)
            mean, std = self._encode(torch.from_numpy(sub.pixels(self.background)))
            for row, i in enumerate(missing):
                self.cache.put(keys[i], mean[row], std[row])
                found[i] = (mean[row].detach().cpu(), std[row].detach().cpu())
        device, dtype = self.vae.device, self.vae.dtype
        mean = torch.stack([m for m, _ in found]).to(device, dtype)
        std = torch.stack([s for _, s in found]).to(device, dtype)
        return mean, std

    @torch.no_grad()
    def latents(self, batch, generator) -> torch.Tensor:
        mean, std = self.distribution(batch)
        return latents_from_distribution(mean, std, generator, self.mode, self.vae.config.scaling_factor)


class TextSource:
    def __init__(self, tokenizer, text_encoder, cache_enabled: bool, text_encoder_trained: bool):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.trained = text_encoder_trained
        self.cache = TextCache() if cache_enabled and not text_encoder_trained else None

    def hidden_states(self, captions: list[str]) -> torch.Tensor:
        if self.cache is None:
            with torch.set_grad_enabled(self.trained):
                return encode_text(self.text_encoder, tokenize(self.tokenizer, captions))
        found = [self.cache.get(caption) for caption in captions]
        missing = sorted({c for c, h in zip(captions, found) if h is None})
        if missing:
            with torch.no_grad():
                hidden = encode_text(self.text_encoder, tokenize(self.tokenizer, missing))
            fresh = {caption: hidden[row] for row, caption in enumerate(missing)}
            for caption, states in fresh.items():
                self.cache.put(caption, states)
            found = [fresh[c] if h is None else h for c, h in zip(captions, found)]
        return torch.stack(found)
