"""The bare reference loop: the same math as sdlora's step written directly with diffusers + peft +
torch (load, add_adapter, loop: encode, noise, predict, MSE, step)."""
from __future__ import annotations

from pathlib import Path

from bench.spec import UNET_LORA_TARGETS, Spec


def set_attention(unet, attention: str) -> None:
    """'sdpa' is diffusers' default (torch scaled_dot_product_attention); 'eager' the plain matmuls."""
    if attention == "eager":
        from diffusers.models.attention_processor import AttnProcessor

        unet.set_attn_processor(AttnProcessor())


class ReferenceLoop:
    """The same math written directly: load, add_adapter, loop(encode, noise, predict, MSE, step)."""

    def __init__(self, spec: Spec):
        import torch
        from diffusers import DDPMScheduler
        from peft import LoraConfig

        self.spec = spec
        use_cuda = spec.device == "cuda" or (spec.device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if use_cuda else "cpu")
        self.dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[spec.precision]
        self.sdxl = spec.model in ("sdxl", "tiny-sdxl")
        if self.sdxl:  # the UNet only: its text and latent inputs are made up below (see _encode)
            from diffusers import UNet2DConditionModel

            self.unet = UNet2DConditionModel.from_pretrained(spec.folder, subfolder="unet")
            self.scheduler = DDPMScheduler.from_pretrained(spec.folder, subfolder="scheduler")
            self.frozen = [self.unet]
        else:
            self._load_sd(spec.folder)
        for module in self.frozen:
            module.requires_grad_(False)
            module.to(self.device, dtype=self.dtype)
        torch.manual_seed(spec.seed)  # LoRA init, as sdlora does it
        self.unet.add_adapter(LoraConfig(r=spec.rank, lora_alpha=spec.rank, init_lora_weights=True,
                                         target_modules=UNET_LORA_TARGETS))
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        for p in self.params:
            p.data = p.data.float()  # LoRA weights train in fp32 under mixed precision
        if spec.checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.unet.train()
        set_attention(self.unet, spec.attention)
        self.optimizer = self._optimizer()
        self.scaler = torch.amp.GradScaler("cuda") if spec.precision == "fp16" else None
        self.generator = torch.Generator().manual_seed(spec.seed)
        self.files = sorted(Path(spec.data).glob("*.png"))[: spec.batch_size] if spec.data else []
        self.captions = [f.with_suffix(".txt").read_text() for f in self.files]
        self.cached = self._fill_caches() if spec.cache else None

    def _load_sd(self, folder: str) -> None:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
        self.vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
        self.text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
        self.tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
        self.scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
        self.frozen = [self.unet, self.vae, self.text_encoder]
        self.vae.eval()
        self.text_encoder.eval()

    def _optimizer(self):
        import torch

        kwargs = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2)
        if self.spec.optimizer == "adamw8bit":
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(self.params, **kwargs)
        return torch.optim.AdamW(self.params, **kwargs)

    def _pixels(self):
        import numpy as np
        import torch
        from PIL import Image

        arrays = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for f in self.files]
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(self.device, self.dtype)

    def _encode(self):
        """(latent mean, latent std, text hidden states) of the batch."""
        import torch

        if self.sdxl:  # no VAE / text encoders here: inputs of the right size, as if cached (compare with --cache on)
            side, channels = self.spec.resolution // 8, self.unet.config.cross_attention_dim
            g = torch.Generator().manual_seed(1)
            mean = torch.randn(self.spec.batch_size, 4, side, side, generator=g)
            hidden = torch.randn(self.spec.batch_size, 77, channels, generator=g)
            return mean.to(self.device, self.dtype), torch.zeros_like(mean).to(self.device, self.dtype), \
                hidden.to(self.device, self.dtype)
        with torch.no_grad():
            dist = self.vae.encode(self._pixels()).latent_dist
            ids = self.tokenizer(self.captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            hidden = self.text_encoder(ids.to(self.device))[0]
        return dist.mean, dist.std, hidden

    def _fill_caches(self):
        return self._encode()

    def _added_cond(self, batch: int):
        import torch

        if not self.sdxl:
            return None
        side = self.spec.resolution
        pooled_dim = self.unet.config.projection_class_embeddings_input_dim - 6 * self.unet.config.addition_time_embed_dim
        time_ids = torch.tensor([[side, side, 0, 0, side, side]] * batch, device=self.device, dtype=self.dtype)
        return {"text_embeds": torch.zeros(batch, pooled_dim, device=self.device, dtype=self.dtype),
                "time_ids": time_ids}

    def loss(self):
        import torch
        import torch.nn.functional as F

        autocast = torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)
        with autocast:
            mean, std, hidden = self.cached if self.cached is not None else self._encode()
            sample = torch.randn(mean.shape, generator=self.generator).to(self.device, mean.dtype)
            scaling = 1.0 if self.sdxl else self.vae.config.scaling_factor
            latents = (mean + std * sample) * scaling
            noise = torch.randn(latents.shape, generator=self.generator).to(self.device, latents.dtype)
            timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (latents.shape[0],),
                                      generator=self.generator).to(self.device)
            noisy = self.scheduler.add_noise(latents, noise, timesteps)
            prediction = self.unet(noisy, timesteps, hidden, added_cond_kwargs=self._added_cond(latents.shape[0])).sample
            return F.mse_loss(prediction.float(), noise.float())

    def step(self) -> float:
        import torch

        loss = self.loss()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def count_step_flops(self) -> int:
        """Model FLOPs of one forward + backward (torch's FlopCounterMode), without checkpointing's
        recomputation (so the MFU estimate counts useful work only); no optimizer step, no timing."""
        from torch.utils.flop_counter import FlopCounterMode

        if self.spec.checkpointing:
            self.unet.disable_gradient_checkpointing()
        counter = FlopCounterMode(display=False)
        with counter:
            self.loss().backward()
        self.optimizer.zero_grad(set_to_none=True)
        if self.spec.checkpointing:
            self.unet.enable_gradient_checkpointing()
        return counter.get_total_flops()
