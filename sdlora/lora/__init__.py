"""LoRA injection through PEFT and the adapter's state dict in and out."""
