"""Validation loss on a fixed held-out set: fixed latents (VAE mean), noise and timesteps.

Everything random comes from the validation's own generator, drawn once, so evaluating never
touches the training RNG stream and two runs with the same seed log the same numbers.
"""
from __future__ import annotations

import dataclasses

import torch

from ..models.prompts import PromptEncoder, unet_added_conditions
from .step import diffusion_loss


def validation_data_config(cfg):
    """[data] options for the held-out folder: no augmentation, no repeats, no caches."""
    return dataclasses.replace(
        cfg.data, path=cfg.validation.path, datasets=[], repeats=1, shuffle_tags=False, caption_dropout_rate=0.0,
        tag_dropout_rate=0.0, random_flip=False, center_crop=True, latents="deterministic", cache_latents="off",
    )


class ValidationSet:
    def __init__(self, cfg, base, accelerator):
        self.clip_skip = cfg.model.clip_skip
        from ..data.scan import scan_for_training
        from ..data.stream import BatchStream, build_examples

        data_cfg = validation_data_config(cfg)
        stream = BatchStream(build_examples(scan_for_training(data_cfg), data_cfg), data_cfg, 1, cfg.validation.seed)
        self.batches = [stream.batch(i) for i in range(stream.batches_per_epoch)]
        self.base = base
        self.accelerator = accelerator
        self.timesteps_per_image = cfg.validation.timesteps
        self._latents = None
        self._noise = None
        self.generator = torch.Generator().manual_seed(cfg.validation.seed)

    def _fixed_inputs(self):
        """VAE means and noise per image, computed on the first call and kept."""
        if self._latents is None:
            vae = self.base.vae
            with torch.no_grad():
                self._latents = [
                    vae.encode(torch.from_numpy(b.pixels).to(vae.device, vae.dtype)).latent_dist.mean
                    * vae.config.scaling_factor
                    for b in self.batches
                ]
            k = self.timesteps_per_image
            self._noise = [torch.randn((k, *latent.shape[1:]), generator=self.generator).to(latent.device, latent.dtype)
                           for latent in self._latents]
        return self._latents, self._noise

    def timesteps(self, device) -> torch.Tensor:
        total = self.base.noise_scheduler.config.num_train_timesteps
        k = self.timesteps_per_image
        return torch.tensor([int((j + 0.5) * total / k) for j in range(k)], device=device)

    @torch.no_grad()
    def loss(self, unet, text_encoders: list) -> float:
        latents, noise = self._fixed_inputs()
        encode = PromptEncoder(self.base.family, self.base.tokenizers, text_encoders, self.clip_skip)
        was_training = [m.training for m in (unet, *text_encoders)]
        for module in (unet, *text_encoders):
            module.eval()
        losses = []
        try:
            with self.accelerator.autocast():
                for batch, latent, batch_noise in zip(self.batches, latents, noise):
                    k = batch_noise.shape[0]
                    text = encode(batch.captions).repeated(k)  # one image, k timesteps
                    added = unet_added_conditions(text, batch.items * k, latent.device, latent.dtype)
                    timesteps = self.timesteps(latent.device)
                    value, _ = diffusion_loss(unet, self.base.noise_scheduler, latent.expand(k, -1, -1, -1),
                                              text.hidden, batch_noise, timesteps, added_cond=added)
                    losses.append(value.item())
        finally:
            for module, mode in zip((unet, *text_encoders), was_training):
                module.train(mode)
        return sum(losses) / len(losses)
