"""The trainer as a short story: build -> loop(step, maybe save, maybe sample) -> finish."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..events import ClassImages, DataSummary, EventSink, Finished, Sampled, Saved, Started, Step, Validation, Warning_
from ..lora.inject import count_parameters
from .control import Control
from .setup import RunParts, build_run
from .step import diffusion_loss, sample_noise, sample_timesteps


class Trainer:
    def __init__(self, cfg, run_dir: Path, emit: EventSink, control: Control | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.emit = emit
        self.control = control or Control(self.run_dir)
        self.parts: RunParts | None = None
        self.micro_batch = 0  # position in the batch stream
        self.started_at = time.time()

    def run(self) -> Path:
        started_at = self.started_at = time.time()  # the save metadata reads it too
        self.parts = build_run(self.cfg, warn=lambda message: self.emit(Warning_(message)))
        self._announce()
        step, stopped = 0, False
        total = self.parts.plan.total_steps
        tick = time.time()
        while step < total:
            if self.control.take("stop"):
                stopped = True
                break
            losses = self.optimizer_step()
            step += 1
            now = time.time()
            self._report(step, losses, 1.0 / max(now - tick, 1e-9))
            tick = now
            if step < total:  # the last step is saved, sampled and validated below, once
                self._maybe_save(step, final=False)
                self._maybe_sample(step, final=False)
                self._maybe_validate(step, final=False)
        path = self._maybe_save(step, final=True)
        self._maybe_sample(step, final=True)
        self._maybe_validate(step, final=True)
        self.emit(Finished(step=step, path=str(path), stopped_early=stopped, seconds=time.time() - started_at))
        return path

    def optimizer_step(self) -> dict:
        """gradient_accumulation micro-batches, then one optimizer step; returns the mean losses."""
        parts, cfg = self.parts, self.cfg
        trained = [parts.base.unet] + ([parts.base.text_encoder] if cfg.lora.train_text_encoder else [])
        totals: dict = {}
        for _ in range(cfg.train.gradient_accumulation):
            with parts.accelerator.accumulate(*trained):
                loss, logged = self.micro_step()
                parts.accelerator.backward(loss)
                if parts.accelerator.sync_gradients and cfg.optim.max_grad_norm > 0:
                    params = [p for group in parts.optimizer.param_groups for p in group["params"]]
                    parts.accelerator.clip_grad_norm_(params, cfg.optim.max_grad_norm)
                parts.optimizer.step()
                parts.optimizer.zero_grad(set_to_none=True)
            for name, value in logged.items():
                totals[name] = totals.get(name, 0.0) + value
        parts.lr_scheduler.step()
        return {name: value / cfg.train.gradient_accumulation for name, value in totals.items()}

    def micro_step(self) -> tuple[torch.Tensor, dict]:
        """Loss of the next micro-batch, and the floats to log ('loss', and the DreamBooth parts)."""
        parts, cfg = self.parts, self.cfg
        base, generator = parts.base, parts.generator
        batch = parts.stream.batch(self.micro_batch)
        instances = len(batch.items)
        if parts.prior is not None:
            batch = parts.prior.paired(batch, self.micro_batch)
        self.micro_batch += 1
        with parts.accelerator.autocast():
            latents = parts.latent_source.latents(batch, generator)
            hidden = parts.text_source.hidden_states(batch.captions)
            noise = sample_noise(latents, generator, cfg.train.noise_offset)
            timesteps = sample_timesteps(
                latents.shape[0], generator, base.noise_scheduler.config.num_train_timesteps, latents.device
            )
            loss, per_example = diffusion_loss(
                base.unet, base.noise_scheduler, latents, hidden, noise, timesteps, cfg.train.min_snr_gamma
            )
        if parts.prior is None:
            return loss, {"loss": loss.item()}
        instance_loss, prior_loss = per_example[:instances].mean(), per_example[instances:].mean()
        loss = instance_loss + cfg.dreambooth.prior_loss_weight * prior_loss
        return loss, {"loss": loss.item(), "instance_loss": instance_loss.item(), "prior_loss": prior_loss.item()}

    def _announce(self) -> None:
        parts = self.parts
        counts = count_parameters(parts.base.unet, parts.base.text_encoder)
        self.emit(
            Started(
                total_steps=parts.plan.total_steps,
                epochs=parts.plan.epochs,
                steps_per_epoch=round(parts.plan.steps_per_epoch, 3),
                num_images=parts.plan.num_images,
                trainable_params=counts.trainable,
                total_params=counts.total,
                family=parts.base.family,
                device=str(parts.accelerator.device),
                output_dir=str(self.run_dir),
            )
        )
        stream = parts.stream
        buckets = [[w, h, n] for (w, h), n in stream.bucket_histogram()]
        self.emit(DataSummary(len(stream.examples), stream.samples_per_epoch, stream.batches_per_epoch, buckets))
        if parts.class_images is not None:
            found = parts.class_images
            self.emit(ClassImages(folder=str(found.folder), generated=found.generated, reused=found.reused))

    def _report(self, step: int, losses: dict, it_per_s: float) -> None:
        epoch = (self.micro_batch - 1) // self.parts.stream.batches_per_epoch
        lr = self.parts.lr_scheduler.get_last_lr()[0]
        self.emit(Step(step=step, total=self.parts.plan.total_steps, epoch=epoch, lr=lr, it_per_s=it_per_s, **losses))

    def _maybe_validate(self, step: int, final: bool) -> None:
        validation = self.parts.validation
        if validation is None or not (final or step % self.cfg.validation.every_n_steps == 0):
            return
        unwrapped = _Unwrapped(self.parts)
        self.emit(Validation(step=step, loss=validation.loss(unwrapped.unet, unwrapped.text_encoder)))

    def adapter_path(self, step: int | None) -> Path:
        name = self.cfg.save.output_name
        suffix = "" if step is None else f"-step{step:06d}"
        return self.run_dir / f"{name}{suffix}.safetensors"

    def _maybe_save(self, step: int, final: bool) -> Path | None:
        every = self.cfg.save.every_n_steps
        due = final or (every and step % every == 0) or self.control.take("save")
        if not due:
            return None
        path = self.adapter_path(None if final else step)
        from ..export.training import save_checked_lora, training_info

        epoch = (self.micro_batch - 1) // self.parts.stream.batches_per_epoch
        info = training_info(self.cfg, step, epoch + 1, self.started_at, self.parts.stream.examples)
        save_checked_lora(_Unwrapped(self.parts), path, self.cfg, info)  # raises if the file would not load
        self.emit(Saved(step=step, path=str(path)))
        return path

    def _maybe_sample(self, step: int, final: bool) -> None:
        sample_cfg = self.cfg.sample
        if not sample_cfg.prompts:
            return
        every = sample_cfg.every_n_steps
        due = final or (every and step % every == 0) or self._epoch_ended(sample_cfg.every_n_epochs)
        if not (due or self.control.take("sample")):
            return
        from ..sample import render_previews

        paths = render_previews(_Unwrapped(self.parts), self.cfg, step, self.run_dir / "samples", self.parts.accelerator)
        self.emit(Sampled(step=step, paths=[str(p) for p in paths]))


    def optimizer_step_epochs(self) -> tuple[int, int]:
        """(epochs completed before, after) the last optimizer step."""
        per_epoch = self.parts.stream.batches_per_epoch
        before = self.micro_batch - self.cfg.train.gradient_accumulation
        return before // per_epoch, self.micro_batch // per_epoch

    def _epoch_ended(self, every_n_epochs: int) -> bool:
        """True when the last step completed an epoch that is a multiple of every_n_epochs."""
        if not every_n_epochs:
            return False
        before, after = self.optimizer_step_epochs()
        return any(epoch % every_n_epochs == 0 for epoch in range(before + 1, after + 1))


class _Unwrapped:
    """The base model with accelerate's wrappers removed, for saving and inference."""

    def __init__(self, parts: RunParts):
        base, accelerator = parts.base, parts.accelerator
        self.unet = accelerator.unwrap_model(base.unet)
        self.text_encoder = accelerator.unwrap_model(base.text_encoder)
        self.vae = base.vae
        self.tokenizer = base.tokenizer
        self.folder = base.folder
        self.family = base.family
