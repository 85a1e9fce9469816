"""How an option is declared: one `option(...)` call holds default, help, choices and bounds.

The CLI, the UI form, presets and validation all read this metadata; nothing else declares options.
"""
from __future__ import annotations

import dataclasses
from typing import Any


def option(
    default: Any,
    help: str,
    *,
    choices: tuple | None = None,
    min: float | None = None,
    max: float | None = None,
    advanced: bool = False,
    item_type: type | None = None,
) -> Any:
    """Declare one config option. `item_type` is the element type of a list option."""
    meta = {
        "help": help,
        "choices": choices,
        "min": min,
        "max": max,
        "advanced": advanced,
        "item_type": item_type,
    }
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class OptionInfo:
    """Everything a form or a validator needs to know about one option."""

    section: str
    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None
    min: float | None
    max: float | None
    advanced: bool
    item_type: type | None

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}"
