"""Caption processing: trigger word, keep_tokens, shuffle, tag/caption dropout; exact per seed."""
import random

from sdlora.data.captions import (
    CaptionOptions,
    process_caption,
    split_tags,
    tag_frequencies,
    with_trigger_word,
)
from sdlora.data.scan import scan_for_training
from sdlora.data.stream import BatchStream, build_examples
from tests.data_helpers import config, write_image

CAPTION = "1girl, red hair, smile, outdoors, sky, tree"


def test_trigger_word_inserted_once():
    assert with_trigger_word("a dog, grass", "sks") == "sks, a dog, grass"
    assert with_trigger_word("a dog, sks, grass", "sks") == "a dog, sks, grass"
    assert with_trigger_word("", "sks") == "sks"
    assert process_caption("a b", "", CaptionOptions(), random.Random(0)) == "a b"


def test_shuffle_keeps_first_tokens_exact_for_seed():
    options = CaptionOptions(shuffle_tags=True, keep_tokens=2)
    got = [process_caption(CAPTION, "sks", options, random.Random(f"7-{i}")) for i in (0, 2, 3)]
    assert got == [
        "sks, 1girl, smile, sky, tree, red hair, outdoors",
        "sks, 1girl, sky, outdoors, tree, red hair, smile",
        "sks, 1girl, tree, sky, smile, outdoors, red hair",
    ]
    again = [process_caption(CAPTION, "sks", options, random.Random(f"7-{i}")) for i in (0, 2, 3)]
    assert again == got


def test_tag_dropout_exact_and_rate():
    options = CaptionOptions(shuffle_tags=True, keep_tokens=1, tag_dropout_rate=0.5)
    got = [process_caption(CAPTION, "", options, random.Random(f"7-{i}")) for i in range(3)]
    assert got == ["1girl, red hair, sky", "1girl, sky, red hair, smile", "1girl, sky, outdoors, tree, red hair, smile"]
    quarter = CaptionOptions(tag_dropout_rate=0.25)
    kept = sum(len(split_tags(process_caption(CAPTION, "", quarter, random.Random(f"7-{i}")))) for i in range(1000))
    assert kept == 4491  # 6000 tags x ~0.75
    everything = CaptionOptions(tag_dropout_rate=1.0, keep_tokens=1)
    assert process_caption(CAPTION, "sks", everything, random.Random(0)) == "sks"


def test_caption_dropout_rate():
    options = CaptionOptions(caption_dropout_rate=0.3)
    dropped = sum(process_caption(CAPTION, "", options, random.Random(f"7-{i}")) == "" for i in range(1000))
    assert dropped == 277
    assert process_caption(CAPTION, "sks", CaptionOptions(caption_dropout_rate=1.0), random.Random(1)) == ""


def test_tag_frequencies_top():
    captions = ["a, b, c", "a, b", "a, a", "d"]
    assert tag_frequencies(captions, top=3) == [("a", 3), ("b", 2), ("c", 1)]


def _stream(tmp_path, **data):
    for i, caption in enumerate(["sks, cat, grass, sun", "sks, cat, sofa", "dog, ball, park, sun"]):
        write_image(tmp_path, f"{i}.png", caption=caption)
    cfg = config({"path": str(tmp_path), "resolution": 64, "trigger_word": "sks", **data})
    return BatchStream(build_examples(scan_for_training(cfg.data), cfg.data), cfg.data, 1, seed=42)


def test_stream_captions_exact_for_seed_and_replayable(tmp_path):
    stream = _stream(tmp_path, shuffle_tags=True, keep_tokens=1, caption_dropout_rate=0.2, tag_dropout_rate=0.2)
    epochs = [[stream.batch(e * 3 + i).captions[0] for i in range(3)] for e in range(2)]
    assert epochs == EXPECTED_STREAM_CAPTIONS
    fresh = _stream(tmp_path, shuffle_tags=True, keep_tokens=1, caption_dropout_rate=0.2, tag_dropout_rate=0.2)
    assert [fresh.batch(i).captions[0] for i in (5, 3, 4)] == [epochs[1][2], epochs[1][0], epochs[1][1]]


EXPECTED_STREAM_CAPTIONS = [
    ["sks, sun, park, ball", "sks, cat, sofa", "sks, cat, grass"],  # 'dog' / 'sun' lost to tag dropout
    ["sks, sofa, cat", "sks, dog, ball, sun, park", "sks, sun, cat"],
]
