"""LoRA files that leave the program: kohya/A1111 and diffusers/PEFT layouts, metadata, import,
and the compatibility check that proves a file loads (see docs FORMATS.md for the facts)."""
