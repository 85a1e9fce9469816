"""One training loss: encode, noise, predict, weighted MSE (epsilon or v-prediction target)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models.prompts import tokenize  # noqa: F401 -- re-exported for the bare-math tests


def encode_text(text_encoder, input_ids: torch.Tensor) -> torch.Tensor:
    return text_encoder(input_ids.to(text_encoder.device))[0]


def encode_latents(vae, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Sample the VAE posterior with our own generator, so the training RNG stream stays ours."""
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    noise = torch.randn(dist.mean.shape, generator=generator, dtype=torch.float32).to(dist.mean.device, dist.mean.dtype)
    latents = dist.mean + dist.std * noise
    return latents * vae.config.scaling_factor


def sample_noise(latents: torch.Tensor, generator: torch.Generator, noise_offset: float) -> torch.Tensor:
    shape = latents.shape
    noise = torch.randn(shape, generator=generator, dtype=torch.float32)
    if noise_offset:
        # Shift whole channels so the model learns to change overall brightness (Guttenberg's trick).
        noise = noise + noise_offset * torch.randn(shape[0], shape[1], 1, 1, generator=generator)
    return noise.to(latents.device, latents.dtype)


def sample_timesteps(batch_size: int, generator: torch.Generator, num_train_timesteps: int, device) -> torch.Tensor:
    return torch.randint(0, num_train_timesteps, (batch_size,), generator=generator).to(device)


def diffusion_target(noise_scheduler, latents, noise, timesteps) -> torch.Tensor:
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def min_snr_weights(noise_scheduler, timesteps, gamma: float) -> torch.Tensor:
    """Per-example loss weights of Min-SNR (Hang et al. 2023): min(SNR, gamma) / SNR (or SNR+1 for v)."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


def diffusion_loss(unet, noise_scheduler, latents, encoder_hidden_states, noise, timesteps, min_snr_gamma=0.0,
                   added_cond=None):
    """Mean loss of the batch; also returns the per-example losses (for logging and prior loss).
    added_cond: SDXL's pooled text and size/crop ids (models.prompts.unet_added_conditions)."""
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    target = diffusion_target(noise_scheduler, latents, noise, timesteps)
    prediction = unet(noisy, timesteps, encoder_hidden_states, added_cond_kwargs=added_cond).sample
    per_example = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if min_snr_gamma:
        per_example = per_example * min_snr_weights(noise_scheduler, timesteps, min_snr_gamma).to(per_example.device)
    return per_example.mean(), per_example
