"""Caption processing: comma tags, trigger word, keep_tokens, shuffle, tag and caption dropout.

Every random choice comes from the `rng` passed in, which the stream seeds from (seed, epoch, slot),
so the caption an example gets is a pure function of its position in the stream.
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

TAG_SEPARATOR = ","


@dataclass(frozen=True)
class CaptionOptions:
    shuffle_tags: bool = False
    keep_tokens: int = 0
    caption_dropout_rate: float = 0.0
    tag_dropout_rate: float = 0.0

    @classmethod
    def from_config(cls, data_cfg) -> "CaptionOptions":
        return cls(data_cfg.shuffle_tags, data_cfg.keep_tokens, data_cfg.caption_dropout_rate, data_cfg.tag_dropout_rate)

    @property
    def random(self) -> bool:
        return self.shuffle_tags or self.caption_dropout_rate > 0 or self.tag_dropout_rate > 0


def split_tags(caption: str) -> list[str]:
    return [tag.strip() for tag in caption.split(TAG_SEPARATOR) if tag.strip()]


def with_trigger_word(caption: str, trigger_word: str) -> str:
    """The trigger word as the first tag, unless the caption already has it as a tag."""
    trigger_word = trigger_word.strip()
    if not trigger_word or trigger_word in split_tags(caption):
        return caption
    return f"{trigger_word}, {caption}" if caption.strip() else trigger_word


def process_caption(caption: str, trigger_word: str, options: CaptionOptions, rng: random.Random) -> str:
    """The caption as the model sees it this time. The rng draws are always the same in number
    for the same caption and options, whatever they decide."""
    caption = with_trigger_word(caption.strip(), trigger_word)
    if not options.random:
        return caption
    drop_caption = rng.random() < options.caption_dropout_rate
    tags = split_tags(caption)
    fixed, movable = tags[: options.keep_tokens], tags[options.keep_tokens :]
    keep_flags = [rng.random() >= options.tag_dropout_rate for _ in movable]
    movable = [tag for tag, keep in zip(movable, keep_flags) if keep]
    if options.shuffle_tags:
        rng.shuffle(movable)
    if drop_caption:
        return ""
    return ", ".join(fixed + movable)


def tag_frequencies(captions: list[str], top: int = 20) -> list[tuple[str, int]]:
    """The `top` most common tags (counted once per caption), most common first, ties by name."""
    counts = Counter(tag for caption in captions for tag in set(split_tags(caption)))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:top]
