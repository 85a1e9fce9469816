"""train.offload_encoders: once every latent and caption of the dataset is cached, the frozen VAE
and text encoder(s) leave the GPU for the CPU (they come back only while previews render), so
the GPU holds the UNet, the LoRA and the activations alone."""
from __future__ import annotations

import contextlib

from ..errors import TrainingError
from .memory_auto import offload_blockers

ENCODERS = ("vae", "text_encoder", "text_encoder_2")


def offload_encoders_after_caching(parts, cfg, warn) -> bool:
    """Fill the latent and text caches for one epoch (every item and caption a run will see, since
    nothing random changes them: offload_blockers), then move the encoders to the CPU."""
    if not cfg.train.offload_encoders:
        return False
    if parts.accelerator.device.type != "cuda":
        warn("train.offload_encoders has no effect on CPU: the encoders are in RAM either way.")
        return False
    blockers = offload_blockers(cfg)
    if blockers:
        raise TrainingError(
            "train.offload_encoders needs every latent and caption cached before training, but these options "
            f"need the encoders during training: {', '.join(blockers)}. Change them, or set "
            "train.offload_encoders = false."
        )
    fill_caches(parts)
    for name in ENCODERS:
        module = getattr(parts.base, name, None)
        if module is not None:
            module.to("cpu")
    import torch

    torch.cuda.empty_cache()
    return True


def fill_caches(parts) -> None:
    """Encode every item and caption of one epoch into the caches (later epochs reuse them)."""
    stream = parts.stream
    for index in range(stream.batches_per_epoch):
        batch = stream.batch(index)
        parts.latent_source.distribution(batch)
        parts.text_source.embeddings(batch.captions)


@contextlib.contextmanager
def encoders_beside_unet(model):
    """Previews need the VAE and text encoder(s) where the UNet is; put them back afterwards."""
    target = next(model.unet.parameters()).device
    moved = []
    for name in ENCODERS:
        module = getattr(model, name, None)
        if module is not None:
            where = next(module.parameters()).device
            if where != target:
                module.to(target)
                moved.append((module, where))
    try:
        yield
    finally:
        for module, where in moved:
            module.to(where)
