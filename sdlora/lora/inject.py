"""Add LoRA layers to the UNet and text encoder through PEFT; everything else stays frozen."""
from __future__ import annotations

from dataclasses import dataclass

UNET_TARGETS = {
    "attn": ("to_q", "to_k", "to_v", "to_out.0"),
    "attn-ff": ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"),
    # LoCon: also the resnets' 3x3 convs (kohya exports them as conv_dim / conv_alpha)
    "attn-ff-conv": (
        "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "conv1", "conv2",
    ),
}
TEXT_ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
ADAPTER_NAME = "default"


def lora_config(lora_cfg, target_modules):
    from peft import LoraConfig

    return LoraConfig(
        r=lora_cfg.rank,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        init_lora_weights=True if lora_cfg.init == "default" else "gaussian",
        target_modules=list(target_modules),
    )


@dataclass
class ParamCount:
    trainable: int
    total: int

    def __str__(self) -> str:
        percent = 100 * self.trainable / max(self.total, 1)
        return f"trainable params: {self.trainable:,d} || all params: {self.total:,d} || trainable%: {percent:.4f}"


def trained_text_encoders(base, lora_cfg) -> dict:
    """{component name: text encoder} that get LoRA layers: none, CLIP-L, or (SDXL) also bigG."""
    if not lora_cfg.train_text_encoder:
        return {}
    encoders = {"text_encoder": base.text_encoder}
    if base.text_encoder_2 is not None and lora_cfg.train_text_encoder_2:
        encoders["text_encoder_2"] = base.text_encoder_2
    return encoders


def add_lora(base, lora_cfg) -> None:
    """Freeze the base model and add LoRA adapters per the config's [lora] section."""
    for module in base.frozen_parts:
        module.requires_grad_(False)
    base.unet.add_adapter(lora_config(lora_cfg, UNET_TARGETS[lora_cfg.unet_targets]), adapter_name=ADAPTER_NAME)
    for encoder in trained_text_encoders(base, lora_cfg).values():
        encoder.add_adapter(lora_config(lora_cfg, TEXT_ENCODER_TARGETS), adapter_name=ADAPTER_NAME)


def trainable_parameters(module) -> list:
    return [p for p in module.parameters() if p.requires_grad]


def count_parameters(*modules) -> ParamCount:
    trainable = sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)
    total = sum(p.numel() for m in modules for p in m.parameters())
    return ParamCount(trainable, total)
