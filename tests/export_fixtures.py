"""Tiny pipelines with LoRA layers added directly through PEFT, for the export tests."""
from __future__ import annotations

import torch

UNET_TARGETS = {
    "attn": ["to_q", "to_k", "to_v", "to_out.0"],
    "ff-conv": ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
                "conv1", "conv2"],
}
TEXT_TARGETS = {"attn": ["q_proj", "k_proj", "v_proj", "out_proj"],
                "ff-conv": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]}
TEXT_ENCODERS = {"sd15": ("text_encoder",), "sd2-v": ("text_encoder",), "sdxl": ("text_encoder", "text_encoder_2")}


def text_encoders(pipe, family):
    return {name: getattr(pipe, name) for name in TEXT_ENCODERS[family]}


def pipeline_with_lora(family: str, targets: str = "attn", rank: int = 4, alpha: float = 2.0, seed: int = 1):
    """Tiny pipeline (seed 0 weights) + LoRA with random, non-zero A and B (so it has an effect)."""
    from peft import LoraConfig

    from sdlora.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(family, seed=0)
    torch.manual_seed(seed)
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=UNET_TARGETS[targets]))
    for te in text_encoders(pipe, family).values():
        te.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=TEXT_TARGETS[targets]))
    with torch.no_grad():
        for model in [pipe.unet, *text_encoders(pipe, family).values()]:
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5)
    return pipe


def unet_inputs(pipe, family):
    g = torch.Generator().manual_seed(3)
    cross = pipe.unet.config.cross_attention_dim
    args = dict(sample=torch.randn(1, 4, 8, 8, generator=g), timestep=torch.tensor([500]),
                encoder_hidden_states=torch.randn(1, 7, cross, generator=g))
    if family == "sdxl":
        args["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 32, generator=g),
                                     "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    return args


@torch.no_grad()
def outputs(pipe, family):
    """UNet output and every text encoder's last hidden state on fixed inputs."""
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407]])
    result = {"unet": pipe.unet(**unet_inputs(pipe, family)).sample}
    for name, te in text_encoders(pipe, family).items():
        result[name] = te(ids).last_hidden_state
    return result


def max_output_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)
