"""Captions -> what the UNet is conditioned on, for every family.

SD1 / SD2: the text encoder's last hidden state; with clip skip N > 1 the N-th layer from the end,
through the final layer norm (what A1111 and kohya do).
SDXL: the penultimate hidden states of CLIP-L and OpenCLIP-bigG side by side (768 + 1280 = 2048
wide in the real model) plus bigG's pooled, projected embedding; clip skip N > 1 goes N - 1 layers
further back. SDXL also takes six size/crop numbers per image (`sdxl_time_ids`).

Clip skip counts as in A1111 / kohya (1 = no skip, 2 = penultimate); diffusers pipelines count
from 0, so previews pass `diffusers_clip_skip(N)`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError


@dataclass
class PromptEmbeddings:
    """Text conditioning of a batch: hidden states (B x 77 x D) and, for SDXL, pooled (B x P)."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None = None

    def row(self, index: int) -> "PromptEmbeddings":
        pooled = None if self.pooled is None else self.pooled[index]
        return PromptEmbeddings(self.hidden[index], pooled)

    def detached(self) -> "PromptEmbeddings":
        pooled = None if self.pooled is None else self.pooled.detach().clone()
        return PromptEmbeddings(self.hidden.detach().clone(), pooled)

    def repeated(self, k: int) -> "PromptEmbeddings":
        """A one-row batch expanded to k rows (views, no copy)."""
        pooled = None if self.pooled is None else self.pooled.expand(k, -1)
        return PromptEmbeddings(self.hidden.expand(k, -1, -1), pooled)

    @staticmethod
    def stack(rows: list["PromptEmbeddings"]) -> "PromptEmbeddings":
        pooled = None if rows[0].pooled is None else torch.stack([r.pooled for r in rows])
        return PromptEmbeddings(torch.stack([r.hidden for r in rows]), pooled)


def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def diffusers_clip_skip(clip_skip: int) -> int | None:
    """model.clip_skip (A1111 count, 1 = none) as diffusers pipelines' clip_skip (None = none)."""
    return clip_skip - 1 if clip_skip > 1 else None


class PromptEncoder:
    """Encodes captions with a family's text encoder(s); `encoders` may carry LoRA layers."""

    def __init__(self, family: str, tokenizers: list, encoders: list, clip_skip: int = 1):
        self.sdxl = family == "sdxl"
        self.tokenizers = tokenizers
        self.encoders = encoders
        self.clip_skip = clip_skip
        layers = min(_layer_count(e) for e in encoders)
        deepest = clip_skip + (1 if self.sdxl else 0)
        if deepest > layers:
            raise ConfigError(
                f"model.clip_skip = {clip_skip} skips more layers than the text encoder has ({layers}); "
                f"use a value from 1 to {layers - (1 if self.sdxl else 0)} (2 = penultimate layer is the usual choice)."
            )

    def __call__(self, captions: list[str]) -> PromptEmbeddings:
        if self.sdxl:
            return self._encode_sdxl(captions)
        encoder = self.encoders[0]
        ids = tokenize(self.tokenizers[0], captions).to(encoder.device)
        if self.clip_skip == 1:
            return PromptEmbeddings(encoder(ids)[0])
        output = encoder(ids, output_hidden_states=True)
        return PromptEmbeddings(_text_model(encoder).final_layer_norm(output.hidden_states[-self.clip_skip]))

    def _encode_sdxl(self, captions: list[str]) -> PromptEmbeddings:
        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.encoders):
            output = encoder(tokenize(tokenizer, captions).to(encoder.device), output_hidden_states=True)
            hidden.append(output.hidden_states[-(self.clip_skip + 1)])
            pooled = output[0]  # the last encoder's (bigG's) projected pooled embedding
        return PromptEmbeddings(torch.cat(hidden, dim=-1), pooled)


def _text_model(encoder):
    """What holds final_layer_norm: transformers 5 flattened CLIPTextModel (older ones nest a
    .text_model); either may be wrapped by accelerate."""
    inner = getattr(encoder, "module", encoder)
    return getattr(inner, "text_model", inner)


def _layer_count(encoder) -> int:
    return getattr(encoder, "module", encoder).config.num_hidden_layers


def sdxl_time_ids(items) -> torch.Tensor:
    """B x 6 SDXL micro-conditioning per drawn image: original (h, w), crop top-left (top, left) in
    the resized image, and target (h, w) = the bucket. A flipped crop is measured from the left
    edge of the flipped image, as the UNet would see it."""
    rows = []
    for item in items:
        width, height = item.example.size
        crop = item.crop
        bucket_w, bucket_h = crop.bucket
        left = crop.resized[0] - crop.left - bucket_w if item.flip else crop.left
        rows.append([height, width, crop.top, left, bucket_h, bucket_w])
    return torch.tensor(rows, dtype=torch.float32)


def unet_added_conditions(embeddings: PromptEmbeddings, items, device, dtype) -> dict | None:
    """The UNet's added_cond_kwargs: SDXL's pooled text + time ids; None for SD1 / SD2."""
    if embeddings.pooled is None:
        return None
    return {"text_embeds": embeddings.pooled, "time_ids": sdxl_time_ids(items).to(device, dtype)}
