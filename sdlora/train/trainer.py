"""The trainer as a short story: build -> loop(step, maybe save / sample / validate / keep state) -> finish."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch

from ..errors import TrainingError
from ..events import (
    ClassImages, DataSummary, EventSink, Finished, Resumed, Sampled, Saved, Started, StateSaved, Step, Validation,
    Warning_,
)
from ..lora.inject import count_parameters
from ..models.prompts import unet_added_conditions
from .control import Control
from .setup import RunParts, build_run, trained_modules
from .step import diffusion_loss, sample_noise, sample_timesteps


def test_hook_nan_steps() -> set[int]:
    """Test hook: SDLORA_TEST_NAN_AT_STEP='5' or '5,7' or '5-9' poisons the loss of those
    optimizer steps with NaN, to exercise the NaN guard. Read here only; unset in normal use."""
    steps: set[int] = set()
    for part in filter(None, os.environ.get("SDLORA_TEST_NAN_AT_STEP", "").split(",")):
        low, _, high = part.partition("-")
        steps.update(range(int(low), int(high or low) + 1))
    return steps


class Trainer:
    def __init__(self, cfg, run_dir: Path, emit: EventSink, control: Control | None = None,
                 resume: bool = False, resume_state: Path | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.emit = emit
        self.control = control or Control(self.run_dir)
        self.parts: RunParts | None = None
        self.micro_batch = 0  # position in the batch stream
        self.started_at = time.time()
        self.resume = resume or resume_state is not None
        self.resume_state = resume_state  # a state folder; None with resume = start over in the same folder
        self.nan_streak = 0  # optimizer steps in a row skipped for non-finite loss or gradients
        self.last_step_skipped = False
        self._nan_steps = test_hook_nan_steps()
        self._state_saved_at: int | None = None

    def run(self) -> Path:
        started_at = self.started_at = time.time()  # the save metadata reads it too
        self.parts = build_run(self.cfg, warn=lambda message: self.emit(Warning_(message)))
        self._announce()
        step, stopped = self._resume_point(), False
        total = self.parts.plan.total_steps
        tick = time.time()
        while step < total:
            if self.control.take("stop"):
                stopped = True
                break
            losses = self.optimizer_step(step + 1)
            step += 1
            now = time.time()
            self._report(step, losses, 1.0 / max(now - tick, 1e-9))
            tick = now
            self._guard_nan(step)
            if step < total:  # the last step is saved, sampled and validated below, once
                self._maybe_save(step, final=False)
                self._maybe_sample(step, final=False)
                self._maybe_validate(step, final=False)
                self._maybe_save_state(step, final=False)
        path = self._maybe_save(step, final=True)
        self._maybe_sample(step, final=True)
        self._maybe_validate(step, final=True)
        self._maybe_save_state(step, final=True)
        self.emit(Finished(step=step, path=str(path), stopped_early=stopped, seconds=time.time() - started_at))
        return path

    def _resume_point(self) -> int:
        """The step to go on from: 0 for a new run, else the saved state's (restored into the parts)."""
        if not self.resume:
            return 0
        step, state = 0, ""
        if self.resume_state is not None:
            from .state import load_state

            step, state = load_state(self, self.resume_state).step, str(self.resume_state)
            self._state_saved_at = step
        epoch = max(self.micro_batch - 1, 0) // self.parts.stream.batches_per_epoch
        self.emit(Resumed(step=step, epoch=epoch, total_steps=self.parts.plan.total_steps, state=state))
        return step

    def optimizer_step(self, step: int | None = None) -> dict:
        """gradient_accumulation micro-batches, then one optimizer step; returns the mean losses.
        Non-finite loss or gradients skip the update (the step still counts; see _guard_nan)."""
        parts, cfg = self.parts, self.cfg
        trained = list(trained_modules(parts.base, cfg.lora).values())
        params = [p for group in parts.optimizer.param_groups for p in group["params"]]
        totals: dict = {}
        self.last_step_skipped = False
        for _ in range(cfg.train.gradient_accumulation):
            with parts.accelerator.accumulate(*trained):
                loss, logged = self.micro_step()
                if step in self._nan_steps:  # test hook
                    loss, logged = loss * float("nan"), {name: float("nan") for name in logged}
                parts.accelerator.backward(loss)
                for name, value in logged.items():
                    totals[name] = totals.get(name, 0.0) + value
                if parts.accelerator.sync_gradients:
                    if math.isfinite(totals["loss"]) and _grads_finite(params):
                        if cfg.optim.max_grad_norm > 0:
                            parts.accelerator.clip_grad_norm_(params, cfg.optim.max_grad_norm)
                        parts.optimizer.step()
                    else:
                        self.last_step_skipped = True
                    parts.optimizer.zero_grad(set_to_none=True)
        parts.lr_scheduler.step()
        return {name: value / cfg.train.gradient_accumulation for name, value in totals.items()}

    def _guard_nan(self, step: int) -> None:
        """Count skipped steps in a row; after train.nan_max_consecutive, roll back and stop."""
        if not self.last_step_skipped:
            self.nan_streak = 0
            return
        self.nan_streak += 1
        limit = self.cfg.train.nan_max_consecutive
        self.emit(Warning_(f"step {step}: the loss or gradients were not finite (NaN/inf); the update was "
                           f"skipped ({self.nan_streak} in a row, stop at {limit})."))
        if self.nan_streak >= limit:
            self._roll_back(step)

    def _roll_back(self, step: int) -> None:
        from .state import latest_state, load_state

        good = latest_state(self.run_dir, good_only=True)
        if good is not None:
            restored = load_state(self, good).step
            where = f"Rolled back to the last good state, step {restored} ({good})"
        else:  # skipped steps never change the weights: the current ones are the last good ones
            restored = step - self.nan_streak
            where = f"No state was saved before the problem; the weights are those of step {restored}"
        path = self._maybe_save(restored, final=True)
        raise TrainingError(
            f"Training stopped at step {step}: the loss or gradients were not finite (NaN/inf) for "
            f"{self.nan_streak} steps in a row. {where}; its adapter is {path}. What to try: a lower "
            "optim.learning_rate (e.g. half), train.mixed_precision = 'bf16' instead of 'fp16' (fp16 "
            "overflows), an fp32 VAE (train.mixed_precision = 'no'; SDXL's VAE overflows in fp16), "
            "optim.max_grad_norm = 1.0, and check the dataset for broken images."
        )

    def _maybe_save_state(self, step: int, final: bool) -> None:
        every = self.cfg.save.state_every_n_steps
        due = final or (every and step % every == 0)
        if not due or self._state_saved_at == step or (self.nan_streak and not final):
            return
        from .state import save_state

        path = save_state(self, step)
        self._state_saved_at = step
        self.emit(StateSaved(step=step, path=str(path)))

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
            text = parts.text_source.embeddings(batch.captions)
            added = unet_added_conditions(text, batch.items, latents.device, latents.dtype)
            noise = sample_noise(latents, generator, cfg.train.noise_offset)
            timesteps = sample_timesteps(
                latents.shape[0], generator, base.noise_scheduler.config.num_train_timesteps, latents.device
            )
            loss, per_example = diffusion_loss(
                base.unet, base.noise_scheduler, latents, text.hidden, noise, timesteps, cfg.train.min_snr_gamma, added
            )
        if parts.prior is None:
            return loss, {"loss": loss.item()}
        instance_loss, prior_loss = per_example[:instances].mean(), per_example[instances:].mean()
        loss = instance_loss + cfg.dreambooth.prior_loss_weight * prior_loss
        return loss, {"loss": loss.item(), "instance_loss": instance_loss.item(), "prior_loss": prior_loss.item()}

    def _announce(self) -> None:
        parts = self.parts
        counts = count_parameters(parts.base.unet, *parts.base.text_encoders)
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
        from .state import rng_untouched

        unwrapped = _Unwrapped(self.parts)
        with rng_untouched():
            loss = validation.loss(unwrapped.unet, unwrapped.text_encoders)
        self.emit(Validation(step=step, loss=loss))

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
        from .state import rng_untouched

        epoch = (self.micro_batch - 1) // self.parts.stream.batches_per_epoch
        info = training_info(self.cfg, step, epoch + 1, self.started_at, self.parts.stream.examples)
        with rng_untouched():  # the check builds models; a save must not change what is learned
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
        from .state import rng_untouched

        with rng_untouched():
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


def _grads_finite(params) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)


class _Unwrapped:
    """The base model with accelerate's wrappers removed, for saving and inference."""

    def __init__(self, parts: RunParts):
        base, accelerator = parts.base, parts.accelerator
        self.unet = accelerator.unwrap_model(base.unet)
        self.text_encoder = accelerator.unwrap_model(base.text_encoder)
        self.text_encoder_2 = None if base.text_encoder_2 is None else accelerator.unwrap_model(base.text_encoder_2)
        self.vae = base.vae
        self.tokenizer = base.tokenizer
        self.tokenizer_2 = base.tokenizer_2
        self.folder = base.folder
        self.family = base.family

    @property
    def text_encoders(self) -> list:
        return [e for e in (self.text_encoder, self.text_encoder_2) if e is not None]
