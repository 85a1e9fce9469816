"""Benchmark: sdlora's training step against a bare diffusers + peft + torch reference loop.

Both loops train the same LoRA on the same model folder, data, seed and options; each runs in its
own worker process (so each has its own peak memory), and the parent drives them in lock-step,
one step at a time in alternating order (A B, B A, ...), so load from other programs on the
machine falls on both alike. Only one worker computes at any moment.

Figures: steady-state seconds per step (after warm-up steps that also fill the caches), the
ratio sdlora / reference (of medians, and the median of per-round ratios), and peak memory over
the timed steps: RSS on CPU (VmHWM after resetting it through /proc/self/clear_refs), and
torch.cuda.max_memory_allocated on CUDA.

Models: 'tiny' (builtin:tiny-sd15), 'sd15' (full-size SD1.5 shapes, random weights, built once
into <SDLORA_HOME>/models/bench-sd15-full), 'sdxl' (full-size SDXL UNet shape, reference loop
only since sdlora does not train SDXL yet; CUDA only), 'tiny-sdxl' (the SDXL reference path on a
tiny UNet, to check that code path on CPU).

    PYTHONPATH=. python bench/train_step.py --model tiny --json out.json
    PYTHONPATH=. python bench/train_step.py --model sd15 --checkpointing --optimizer adamw8bit
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # sdlora's default 'attn' targets
SD15_FOLDER_NAME = "bench-sd15-full"
CAPTION = "a photo of sks dog, outdoors"
# Dense bf16 tensor-core peaks (TFLOP/s, without sparsity) for the MFU estimate; --peak-tflops overrides.
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
                    "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10": 125.0,
                    "RTX 4090": 165.0, "RTX 3090": 71.0}
DEFAULTS = {  # model -> (resolution, batch size, rank, warm-up steps, timed steps)
    "tiny": (64, 4, 4, 3, 20),
    "tiny-sdxl": (64, 4, 4, 3, 20),
    "sd15": (512, 1, 16, 2, 3),
    "sdxl": (1024, 1, 16, 2, 5),
}


@dataclass
class Spec:
    """Everything both loops share; sent to each worker."""

    model: str
    folder: str
    data: str
    resolution: int
    batch_size: int
    rank: int
    optimizer: str
    checkpointing: bool
    cache: bool
    precision: str
    attention: str
    device: str
    seed: int
    count_flops: bool
    threads: int  # torch intra-op threads per worker; 0 = torch's default (all cores)
    run_dir: str


# ----------------------------------------------------------------------------- model + data


def sd15_full_folder() -> Path:
    """A diffusers folder with SD1.5's real shapes and random weights (UNet 860M, VAE, CLIP-L)."""
    from sdlora.models.loading import sdlora_home

    folder = sdlora_home() / "models" / SD15_FOLDER_NAME
    if (folder / "model_index.json").is_file():
        return folder
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdlora.fsutil import atomic_dir
    from sdlora.models.tiny import build_full_sd15_unet
    from sdlora.models.tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE, clip_tokenizer

    print(f"building full-size random SD1.5 into {folder} (once) ...", flush=True)
    unet = build_full_sd15_unet(seed=0)
    torch.manual_seed(1)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    with atomic_dir(folder) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return folder


def model_folder(model: str) -> str:
    if model in ("sdxl", "tiny-sdxl"):
        return ""  # UNet built in code, reference loop only
    if model == "tiny":
        from sdlora.models.loading import builtin_model_path

        return str(builtin_model_path("tiny-sd15"))
    return str(sd15_full_folder())


def make_dataset(folder: Path, count: int, side: int) -> None:
    """`count` smooth random RGB images of side x side with one caption each (one batch per epoch)."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        coarse = rng.integers(0, 256, (max(side // 16, 2), max(side // 16, 2), 3), dtype=np.uint8)
        Image.fromarray(coarse).resize((side, side), Image.Resampling.BICUBIC).save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(CAPTION)


# ----------------------------------------------------------------------------- memory


def reset_peak_memory(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux: '5' resets the peak resident set size (VmHWM) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory(device) -> dict:
    import resource

    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        return {"kind": "cuda_max_memory_allocated", "bytes": torch.cuda.max_memory_allocated(),
                "reserved_bytes": torch.cuda.max_memory_reserved()}
    lifetime = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    try:
        status = Path("/proc/self/status").read_text()
        hwm = next(int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmHWM:"))
        return {"kind": "rss_peak_timed_steps", "bytes": hwm, "ru_maxrss_bytes": lifetime}
    except (OSError, StopIteration):
        return {"kind": "rss_peak_lifetime", "bytes": lifetime, "ru_maxrss_bytes": lifetime}


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- sdlora's loop


class SdloraLoop:
    """sdlora's real code path: a Trainer built from a config; one call = Trainer.optimizer_step()."""

    def __init__(self, spec: Spec):
        from sdlora.config import from_dict
        from sdlora.train.setup import build_run
        from sdlora.train.trainer import Trainer

        cfg = from_dict({
            "model": {"path": spec.folder},
            "data": {"path": spec.data, "resolution": spec.resolution,
                     "cache_latents": "memory" if spec.cache else "off", "cache_text_embeddings": spec.cache},
            "lora": {"rank": spec.rank, "alpha": float(spec.rank)},
            "optim": {"optimizer": spec.optimizer, "learning_rate": 1e-4},
            "train": {"max_steps": 100_000, "batch_size": spec.batch_size, "seed": spec.seed,
                      "gradient_checkpointing": spec.checkpointing, "mixed_precision": spec.precision,
                      "device": spec.device},
        })
        self.warnings: list[str] = []
        self.trainer = Trainer(cfg, Path(spec.run_dir) / "sdlora", emit=lambda event: None)
        self.trainer.parts = build_run(cfg, warn=self.warnings.append)
        self.device = self.trainer.parts.accelerator.device
        unet = self.trainer.parts.accelerator.unwrap_model(self.trainer.parts.base.unet)
        set_attention(unet, spec.attention)

    def step(self) -> float:
        return self.trainer.optimizer_step()


# ----------------------------------------------------------------------------- the bare reference


def set_attention(unet, attention: str) -> None:
    """'sdpa' is diffusers' default (torch scaled_dot_product_attention); 'eager' the plain matmuls."""
    if attention == "eager":
        from diffusers.models.attention_processor import AttnProcessor

        unet.set_attn_processor(AttnProcessor())


def sdxl_unet(tiny: bool):
    """SDXL base UNet shape (2.57B parameters), or a tiny one of the same kind."""
    from diffusers import UNet2DConditionModel

    if tiny:
        from sdlora.models.tiny import _sdxl_unet

        return _sdxl_unet()
    return UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
        cross_attention_dim=2048, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )


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
        if self.sdxl:
            torch.manual_seed(0)
            self.unet = sdxl_unet(tiny=spec.model == "tiny-sdxl")
            self.scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
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

        if self.sdxl:  # no VAE / text encoders are built for the SDXL shape: 'cached' inputs of the right size
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


# ----------------------------------------------------------------------------- workers


def worker_main(conn, mode: str, spec_dict: dict) -> None:
    """One loop in its own process; answers the parent's commands until 'quit'."""
    import logging

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        started = time.perf_counter()
        spec = Spec(**spec_dict)
        if spec.threads:
            import torch

            torch.set_num_threads(spec.threads)
        loop = SdloraLoop(spec) if mode == "sdlora" else ReferenceLoop(spec)
        conn.send(("ok", {"setup_s": time.perf_counter() - started,
                          "warnings": getattr(loop, "warnings", [])}))
        while True:
            command, arg = conn.recv()
            if command == "quit":
                break
            if command == "step":
                sync(loop.device)
                tick, cpu_tick = time.perf_counter(), time.process_time()
                loss = loop.step()
                sync(loop.device)
                conn.send(("ok", {"seconds": time.perf_counter() - tick, "cpu_s": time.process_time() - cpu_tick,
                                  "loss": loss}))
            elif command == "reset_peak":
                reset_peak_memory(loop.device)
                conn.send(("ok", None))
            elif command == "peak":
                conn.send(("ok", peak_memory(loop.device)))
            elif command == "flops":
                conn.send(("ok", loop.count_step_flops()))
            elif command == "device":
                import torch

                name = torch.cuda.get_device_name(loop.device) if loop.device.type == "cuda" else cpu_name()
                conn.send(("ok", {"type": loop.device.type, "name": name}))
    except Exception:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


class Worker:
    def __init__(self, mode: str, spec: Spec):
        context = multiprocessing.get_context("spawn")
        self.mode = mode
        self.conn, child = context.Pipe()
        self.process = context.Process(target=worker_main, args=(child, mode, asdict(spec)), daemon=True)
        self.process.start()
        child.close()

    def receive(self):
        status, value = self.conn.recv()
        if status == "error":
            raise RuntimeError(f"{self.mode} worker failed:\n{value}")
        return value

    def ask(self, command: str, arg=None):
        self.conn.send((command, arg))
        return self.receive()

    def close(self) -> None:
        try:
            self.conn.send(("quit", None))
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


# ----------------------------------------------------------------------------- driver


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "?"


def summary(seconds: list[float]) -> dict:
    return {"mean_s": statistics.fmean(seconds), "median_s": statistics.median(seconds), "min_s": min(seconds),
            "max_s": max(seconds), "steps_per_s": 1.0 / statistics.median(seconds)}


def machine_info() -> dict:
    import torch

    memory = 0
    try:
        memory = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal:"))
    except (OSError, StopIteration):
        pass
    return {"cpu_cores": os.cpu_count(), "memory_bytes": memory, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "loadavg_start": list(os.getloadavg())}


def bf16_peak_tflops(device_name: str | None, override: float) -> float | None:
    if override:
        return override
    if not device_name:
        return None
    for key, value in BF16_PEAK_TFLOPS.items():  # most specific names first
        if key in device_name:
            return value
    return None


def run_benchmark(args) -> dict:
    resolution, batch_size, rank, warmup, steps = DEFAULTS[args.model]
    resolution = args.resolution or resolution
    batch_size = args.batch_size or batch_size
    modes = ["reference"] if args.model in ("sdxl", "tiny-sdxl") else ["sdlora", "reference"]
    modes = [m for m in modes if m in args.modes.split(",")]
    if args.model == "sdxl":
        import torch

        if not torch.cuda.is_available() and not args.allow_cpu_sdxl:
            raise SystemExit("--model sdxl is for CUDA machines (a 2.6B-parameter UNet at 1024 px); "
                             "--allow-cpu-sdxl runs it anyway.")
    info = machine_info()
    with tempfile.TemporaryDirectory(prefix="sdlora-bench-") as tmp:
        data = Path(tmp) / "data"
        if args.model not in ("sdxl", "tiny-sdxl"):
            make_dataset(data, batch_size, resolution)
        spec = Spec(
            model=args.model, folder=model_folder(args.model), data=str(data) if data.exists() else "",
            resolution=resolution, batch_size=batch_size, rank=args.rank or rank, optimizer=args.optimizer,
            checkpointing=args.checkpointing, cache=args.cache == "on", precision=args.precision,
            attention=args.attention, device=args.device, seed=args.seed, count_flops=args.flops, threads=args.threads, run_dir=tmp,
        )
        workers = {mode: Worker(mode, spec) for mode in modes}
        try:
            setup = {mode: w.receive() for mode, w in workers.items()}
            device = workers[modes[0]].ask("device")
            for w in workers.values():
                w.ask("reset_peak")  # first, so a peak from loading is not counted as the warm-up's
            warm = {mode: [] for mode in modes}
            for _ in range(args.warmup if args.warmup is not None else warmup):
                for mode, w in workers.items():
                    warm[mode].append(w.ask("step"))
            for w in workers.values():
                w.ask("reset_peak")
            timed = {mode: [] for mode in modes}
            for i in range(args.steps or steps):
                order = modes if i % 2 == 0 else modes[::-1]
                for mode in order:
                    timed[mode].append(workers[mode].ask("step"))
                if args.verbose:
                    print(f"  round {i + 1}: " + ", ".join(f"{m} {timed[m][-1]['seconds']:.3f}s" for m in modes),
                          flush=True)
            peaks = {mode: w.ask("peak") for mode, w in workers.items()}
            flops = workers["reference"].ask("flops") if args.flops and "reference" in workers else None
        finally:
            for w in workers.values():
                w.close()
    info["loadavg_end"] = list(os.getloadavg())
    results = {}
    for mode in modes:
        seconds = [r["seconds"] for r in timed[mode]]
        cpu = [r["cpu_s"] for r in timed[mode]]
        results[mode] = {**summary(seconds), "step_s": seconds, "cpu_s": cpu, "median_cpu_s": statistics.median(cpu), "warmup_s": [r["seconds"] for r in warm[mode]],
                         "losses": [r["loss"] for r in warm[mode] + timed[mode]], "setup_s": setup[mode]["setup_s"],
                         "peak_memory": peaks[mode], "warnings": setup[mode]["warnings"]}
    report = {"benchmark": "train_step", "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": info,
              "device": device, "settings": {k: v for k, v in asdict(spec).items() if k not in ("run_dir", "data")},
              "results": results}
    if len(modes) == 2:
        a, b = results["sdlora"], results["reference"]
        pairs = [x / y for x, y in zip(a["step_s"], b["step_s"])]
        report["ratio"] = {"median_of_medians": a["median_s"] / b["median_s"], "mean_of_means": a["mean_s"] / b["mean_s"],
                           "min_of_mins": a["min_s"] / b["min_s"], "median_per_round": statistics.median(pairs),
                           "cpu_time_medians": a["median_cpu_s"] / b["median_cpu_s"],
                           "per_round": pairs,
                           "max_abs_loss_diff": max(abs(x - y) for x, y in zip(a["losses"], b["losses"]))}
    if flops:
        peak = bf16_peak_tflops(device.get("name") if device["type"] == "cuda" else None, args.peak_tflops)
        report["flops"] = {"per_step": flops, "peak_tflops": peak, "mfu": {
            mode: (flops / r["median_s"] / (peak * 1e12)) if peak else None for mode, r in results.items()},
            "achieved_tflops": {mode: flops / r["median_s"] / 1e12 for mode, r in results.items()}}
    return report


def print_report(report: dict) -> None:
    s, m = report["settings"], report["machine"]
    print(f"\ntrain_step benchmark, {report['date']}: model {s['model']}, {s['resolution']}px, batch {s['batch_size']}, "
          f"rank {s['rank']}, {s['optimizer']}, checkpointing {'on' if s['checkpointing'] else 'off'}, "
          f"cache {'on' if s['cache'] else 'off'}, precision {s['precision']}, attention {s['attention']}, "
          f"threads {s['threads'] or 'default'}")
    print(f"device {report['device']['type']} ({report['device']['name'] or '?'}), {m['cpu_cores']} cores, "
          f"load {m['loadavg_start'][0]:.2f} -> {m['loadavg_end'][0]:.2f}")
    print(f"{'loop':<10} {'median s':>9} {'mean s':>9} {'min s':>9} {'cpu s':>8} {'steps/s':>8} {'peak mem':>11} "
          f"{'setup s':>8}  steps")
    for mode, r in report["results"].items():
        peak = r["peak_memory"]["bytes"] / 2**30
        print(f"{mode:<10} {r['median_s']:>9.4f} {r['mean_s']:>9.4f} {r['min_s']:>9.4f} {r['median_cpu_s']:>8.3f} "
              f"{r['steps_per_s']:>8.3f} "
              f"{peak:>7.2f} GiB {r['setup_s']:>8.1f}  {len(r['step_s'])}")
    if "ratio" in report:
        ratio = report["ratio"]
        print(f"ratio sdlora/reference: {ratio['median_of_medians']:.3f} (medians), {ratio['median_per_round']:.3f} "
              f"(median of per-round ratios), {ratio['min_of_mins']:.3f} (fastest steps), "
              f"{ratio['cpu_time_medians']:.3f} (process CPU time); "
              f"max |loss diff| {ratio['max_abs_loss_diff']:.2e}")
    if "flops" in report:
        f = report["flops"]
        achieved = ", ".join(f"{k} {v:.2f}" for k, v in f["achieved_tflops"].items())
        mfu = ", ".join(f"{k} {v:.1%}" for k, v in f["mfu"].items() if v is not None) or "n/a (peak unknown)"
        print(f"FLOPs/step {f['per_step'] / 1e12:.3f} TFLOP; achieved TFLOP/s: {achieved}; MFU vs bf16 peak: {mfu}")
    print(f"peak memory: {next(iter(report['results'].values()))['peak_memory']['kind']}, per worker process")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=tuple(DEFAULTS), default="tiny")
    parser.add_argument("--steps", type=int, default=0, help="timed steps per loop (0 = model default)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per loop (default per model)")
    parser.add_argument("--resolution", type=int, default=0, help="pixels (0 = model default)")
    parser.add_argument("--batch-size", type=int, default=0, help="0 = model default")
    parser.add_argument("--rank", type=int, default=0, help="LoRA rank (0 = model default)")
    parser.add_argument("--optimizer", choices=("adamw8bit", "adamw"), default="adamw8bit")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    parser.add_argument("--cache", choices=("on", "off"), default="on", help="cached latents + text embeddings")
    parser.add_argument("--precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument("--attention", choices=("sdpa", "eager"), default="sdpa")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per loop (0 = torch's default); 1 is steadier on a busy machine")
    parser.add_argument("--modes", default="sdlora,reference", help="comma list of loops to run")
    parser.add_argument("--flops", action="store_true", help="count FLOPs per step and estimate MFU")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="bf16 peak of the device for MFU")
    parser.add_argument("--allow-cpu-sdxl", action="store_true")
    parser.add_argument("--json", help="write the full report here")
    parser.add_argument("--verbose", action="store_true", help="print each timed round")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    started = time.time()
    report = run_benchmark(args)
    report["wall_s"] = time.time() - started
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")
    print(f"(benchmark took {report['wall_s']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
