"""Single-file Stable Diffusion checkpoints (the original LDM layout of A1111 / ComfyUI), offline.

- load_single_file(path, family=None, prediction_type=None, allow_pickle=False) -> SingleFile
- write_single_file(pipeline_or_components, path, family=None, dtype=None) -> Path

Read configs come from the file's sdlora metadata, else the shipped standard configs
(sdlora/models/configs/*.json) when they fit the tensors, else shape inference; tokenizers are
built from the shipped CLIP vocabulary. Nothing touches the network.
"""
from .keys import detect_family_from_keys, to_ldm_state_dict
from .read import (
    SingleFile,
    load_scheduler,
    load_single_file,
    peek_family,
    read_metadata,
    read_tensors,
)
from .write import write_single_file

__all__ = [
    "SingleFile",
    "detect_family_from_keys",
    "load_scheduler",
    "load_single_file",
    "peek_family",
    "read_metadata",
    "read_tensors",
    "to_ldm_state_dict",
    "write_single_file",
]
