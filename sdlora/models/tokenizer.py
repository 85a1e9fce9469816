"""The standard CLIP BPE tokenizer, built offline from the vocabulary file shipped in assets/.

`clip_bpe_simple_vocab_16e6.txt.gz` is OpenAI's CLIP BPE merge list as distributed in the
open_clip package (MIT licence, see assets/LICENSE-open_clip). From it we derive the 49408-entry
vocabulary every SD text encoder uses, so no model hub is needed.
"""
from __future__ import annotations

import functools
import gzip
from pathlib import Path

BPE_FILE = Path(__file__).parent / "assets" / "clip_bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
BOS_ID, EOS_ID = 49406, 49407
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2  # byte chars, their </w> forms and the two specials


def _byte_chars() -> list[str]:
    """GPT-2 / CLIP byte-to-unicode table, in vocabulary order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    lines = gzip.open(BPE_FILE, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def clip_tokenizer(max_length: int = 77, pad_token: str = "<|endoftext|>"):
    """A transformers CLIPTokenizer equal to openai/clip-vit-large-patch14's (SD2/SDXL-2 pad with '!')."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=max_length, pad_token=pad_token)
