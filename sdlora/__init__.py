"""sdlora: a Stable Diffusion LoRA trainer with one config file for CLI and web UI."""

__version__ = "0.1.0"
