"""Pretrain the built-in `shapes-sd15` model from scratch on CPU: a small SD1.5-layout pipeline
(AutoencoderKL, UNet2DConditionModel with cross-attention, CLIP text encoder + the standard CLIP
tokenizer) on renderer output of the shapes world (sdlora.demo.shapes).

Stages: (1) train the VAE on half world scenes, half any shape in any two RGB colours (a general
codec, like SD's); (2) set its scaling factor from the latent spread; (3) encode a fixed set of
world scenes once (latent mean / std cached); (4) train the UNet for epsilon prediction jointly
with the text encoder (as the original latent diffusion did), captions dropped 10% for
classifier-free guidance and sometimes given an unknown word in the shape or colour slot, with an
EMA of the weights; (5) save the pipeline as an fp16 diffusers folder. Everything is seeded: the
same seed and thread count give the same model. The concept shape (a cross) and the word 'sks'
never reach stages 3-4.

    PYTHONPATH=. python scripts/pretrain_shapes.py --out sdlora/demo/models/shapes-sd15 --threads 2
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from sdlora.demo.shapes import (
    ALL_SHAPES,
    CONCEPT_TOKEN,
    ShapeScene,
    render,
    world_scenes,
)
from sdlora.models.tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, clip_tokenizer

SIDE = 64
TEXT_HIDDEN = 64
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def build_vae():
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 32, 64), layers_per_block=1, norm_num_groups=2,
        latent_channels=4, sample_size=SIDE,
    )
    with torch.no_grad():  # start with posterior std ~0.05: at std 1 the decoder first sees only noise
        vae.quant_conv.bias[vae.config.latent_channels :] = -6.0
    return vae


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=TEXT_HIDDEN, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
    ))


def build_unet(width: int, layers: int):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=SIDE // 8, in_channels=4, out_channels=4, layers_per_block=layers,
        block_out_channels=(width, 2 * width), down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8, norm_num_groups=8,
    )


def pixels(scenes) -> torch.Tensor:
    import numpy as np

    arrays = np.stack([np.asarray(render(s, SIDE), dtype=np.float32) for s in scenes])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2) / 127.5 - 1.0


def open_scene(rng: random.Random) -> ShapeScene:
    """Any shape (the concept's cross too) in any two clearly different RGB colours: a VAE, like
    SD's, is a general image codec, so a LoRA may later teach a shape or colour the UNet never saw."""
    while True:
        colour, background = (tuple(rng.randrange(256) for _ in range(3)) for _ in range(2))
        if sum((a - b) ** 2 for a, b in zip(colour, background)) > 100**2:
            break
    size = rng.uniform(0.25, 0.8)
    margin = size / 2 + 0.02
    center = (rng.uniform(margin, 1 - margin), rng.uniform(margin, 1 - margin))
    return ShapeScene(rng.choice(ALL_SHAPES), colour, background, size, center)


def vae_scenes(batch: int, rng: random.Random) -> list[ShapeScene]:
    """Half the pretraining world (what the decoder must render best), half open scenes."""
    world = world_scenes(batch - batch // 2, rng.randrange(2**31))
    return world + [open_scene(rng) for _ in range(batch // 2)]


def train_vae(vae, steps: int, batch: int, lr: float, seed: int, log) -> None:
    rng = random.Random(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    vae.train()
    for step in range(1, steps + 1):
        x = pixels(vae_scenes(batch, rng))
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        rec = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x)
        loss = rec + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps:
            log(f"vae step {step}/{steps} recon {rec.item():.4f}")
    vae.eval()


@torch.no_grad()
def encode_cache(vae, scenes, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    means, stds = [], []
    for i in range(0, len(scenes), chunk):
        dist = vae.encode(pixels(scenes[i : i + chunk])).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


class Ema:
    def __init__(self, parameters, decay: float):
        self.decay = decay
        self.parameters = list(parameters)
        self.shadow = [p.detach().clone() for p in self.parameters]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))  # warm start: early weights fade fast
        torch._foreach_lerp_(self.shadow, [p.detach() for p in self.parameters], 1 - decay)

    @torch.no_grad()
    def copy_to_models(self) -> None:
        for p, s in zip(self.parameters, self.shadow):
            p.copy_(s)


class Captions:
    """Token ids of the scenes' captions, padded to 77 as the pipeline pads them, with two kinds
    of noise: 10% empty captions (for classifier-free guidance) and a word no caption uses
    (an untrained random embedding) in the shape or colour slot. The second teaches what real
    CLIP text encoders give SD for free: an unknown word ('sks') still yields a sensible image of
    the caption's other words, so a LoRA only has to bind the word, not repair the sentence."""

    SHAPE_SLOT, COLOUR_SLOT = 3, 2  # [BOS, a, <colour>, <shape>, on, a, <background>, background, EOS]

    def __init__(self, tokenizer, scenes, args):
        self.ids = tokenizer([s.caption for s in scenes], padding="max_length", max_length=77,
                             return_tensors="pt").input_ids
        self.empty = tokenizer("", padding="max_length", max_length=77, return_tensors="pt").input_ids[0]
        words = tokenizer([s.caption for s in scenes[:64]]).input_ids
        if any(len(w) != 9 for w in words):
            raise RuntimeError("every caption word must be one CLIP token (the slots are fixed positions)")
        self.known = torch.unique(torch.cat([self.ids.flatten(), self.empty]))
        known = torch.zeros(VOCAB_SIZE, dtype=torch.bool)
        known[self.known] = True
        known[tokenizer.convert_tokens_to_ids(CONCEPT_TOKEN + "</w>")] = True  # the demo's word stays unseen
        self.unknown = torch.nonzero(~known).flatten()
        self.args = args

    def batch(self, idx: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        ids = self.ids[idx].clone()
        for slot, chance in ((self.SHAPE_SLOT, self.args.unknown_shape_word), (self.COLOUR_SLOT, self.args.unknown_colour_word)):
            swap = torch.rand(len(idx), generator=gen) < chance
            ids[swap, slot] = self.unknown[torch.randint(0, len(self.unknown), (int(swap.sum()),), generator=gen)]
        drop = torch.rand(len(idx), generator=gen) < 0.1
        ids[drop] = self.empty
        return ids


def freeze_unknown_embeddings(text_encoder, known: torch.Tensor) -> None:
    """Only the world's words learn their embeddings; every other row (sks included) stays at its
    random initialisation, so all unknown words look alike to the model."""
    mask = torch.zeros(VOCAB_SIZE, 1)
    mask[known] = 1.0
    text_encoder.get_input_embeddings().weight.register_hook(lambda grad: grad * mask)


def train_unet_and_text_encoder(unet, text_encoder, data: dict, args, log) -> None:
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    noise_scheduler = DDPMScheduler(**SD_BETAS)
    gen = torch.Generator().manual_seed(args.seed + 1)
    means, stds, captions = data["means"], data["stds"], data["captions"]
    freeze_unknown_embeddings(text_encoder, captions.known)
    embeddings = text_encoder.get_input_embeddings().weight
    opt = torch.optim.AdamW([
        {"params": unet.parameters(), "lr": args.unet_lr, "weight_decay": 1e-2},
        {"params": [p for p in text_encoder.parameters() if p is not embeddings], "lr": args.text_lr, "weight_decay": 1e-2},
        {"params": [embeddings], "lr": args.text_lr, "weight_decay": 0.0},  # decay would shrink the unknown rows
    ])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[args.unet_lr, args.text_lr, args.text_lr],
                                                total_steps=args.unet_steps, pct_start=0.03)
    ema = Ema(list(unet.parameters()) + list(text_encoder.parameters()), args.ema)
    unet.train()
    text_encoder.train()
    for step in range(1, args.unet_steps + 1):
        idx = torch.randint(0, len(means), (args.batch,), generator=gen)
        latents = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen)) * data["scale"]
        cond = text_encoder(captions.batch(idx, gen))[0]
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, 1000, (args.batch,), generator=gen)
        pred = unet(noise_scheduler.add_noise(latents, noise, t), t, cond).sample
        snr = compute_snr(noise_scheduler, t)
        weight = torch.clamp(snr, max=5.0) / snr  # min-SNR-5: faster, steadier convergence
        loss = (weight * F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(text_encoder.parameters()), 1.0)
        opt.step()
        sched.step()
        ema.update(step)
        if step % 200 == 0 or step == args.unet_steps:
            log(f"unet step {step}/{args.unet_steps} loss {loss.item():.4f}")
    ema.copy_to_models()
    unet.eval()
    text_encoder.eval()


def prepare_latents(vae, tokenizer, args, log) -> dict:
    scenes = world_scenes(args.cache_images, args.seed + 2)
    probe_mean, probe_std = encode_cache(vae, scenes[:1024])
    spread = (probe_mean + probe_std * torch.randn(probe_mean.shape, generator=torch.Generator().manual_seed(0))).std()
    scale = round(1.0 / spread.item(), 5)
    vae.register_to_config(scaling_factor=scale)
    means, stds = encode_cache(vae, scenes)
    log(f"latents: {len(scenes)} scenes, {len({s.caption for s in scenes})} captions, scaling_factor {scale}")
    return {"means": means, "stds": stds, "captions": Captions(tokenizer, scenes, args), "scale": scale}


def save_pipeline(out: Path, vae, text_encoder, tokenizer, unet, info: dict) -> None:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from sdlora.fsutil import atomic_dir

    scheduler = DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(torch.float16)  # halves the committed size; loaders upcast on demand
    if out.exists():
        import shutil

        shutil.rmtree(out)
    with atomic_dir(out) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        _load_text_encoder_as_fp32(tmp / "text_encoder" / "config.json")
        (tmp / "pretrain.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def _load_text_encoder_as_fp32(config_path: Path) -> None:
    """transformers loads weights in the config's dtype, diffusers in fp32: say fp32 so a plain
    StableDiffusionPipeline.from_pretrained gets one dtype throughout."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["dtype"] = "float32"
    config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="diffusers folder to write (replaced)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the run is timed for 1 and 2)")
    parser.add_argument("--vae-steps", type=int, default=2500)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--vae-lr", type=float, default=2e-3)
    parser.add_argument("--unet-steps", type=int, default=5000, help="steps of the joint UNet + text encoder stage")
    parser.add_argument("--unet-width", type=int, default=32)
    parser.add_argument("--unet-layers", type=int, default=2, help="resnet + attention layers per UNet block (SD has 2)")
    parser.add_argument("--unet-lr", type=float, default=1.5e-3)
    parser.add_argument("--text-lr", type=float, default=1e-3, help="text encoder learning rate (trained jointly)")
    parser.add_argument("--unknown-shape-word", type=float, default=0.15, help="share of captions with an unknown shape word")
    parser.add_argument("--unknown-colour-word", type=float, default=0.1, help="share of captions with an unknown colour word")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ema", type=float, default=0.995)
    parser.add_argument("--cache-images", type=int, default=12000)
    parser.add_argument("--vae-from", type=Path, help="reuse a trained VAE folder (for trials; skips stage 1)")
    parser.add_argument("--vae-only", action="store_true", help="run stage 1 alone and save the VAE folder to --out")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - start:7.1f}s] {message}", flush=True)

    vae, stages = build_vae(), {}
    if args.vae_from:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(args.vae_from).eval()
    else:
        train_vae(vae, args.vae_steps, args.vae_batch, args.vae_lr, args.seed, log)
        stages["vae_s"] = round(time.time() - start, 1)
    if args.vae_only:
        vae.save_pretrained(args.out)
        log(f"saved the VAE to {args.out} ({stages['vae_s']:.0f} s)")
        return
    torch.manual_seed(args.seed + 10)  # own seed: the same text encoder and UNet init with --vae-from
    text_encoder, unet = build_text_encoder(), build_unet(args.unet_width, args.unet_layers)
    tokenizer = clip_tokenizer()
    data = prepare_latents(vae, tokenizer, args, log)
    stages["latents_s"] = round(time.time() - start - sum(stages.values()), 1)
    train_unet_and_text_encoder(unet, text_encoder, data, args, log)
    stages["unet_s"] = round(time.time() - start - sum(stages.values()), 1)
    info = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
    info.update(stages, seconds=round(time.time() - start, 1), torch=torch.__version__)
    save_pipeline(args.out, vae, text_encoder, tokenizer, unet, info)
    log(f"saved {args.out} ({info['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
