"""Base-model loading, family detection, offline tokenizer and tiny model factory."""
