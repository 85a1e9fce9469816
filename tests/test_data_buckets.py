"""Aspect-ratio buckets: the bucket list, assignments, no-upscale, batches never mix, histogram."""
from sdlora.data.buckets import (
    BucketSpec,
    bucket_for,
    bucket_spec,
    format_histogram,
    make_buckets,
)
from sdlora.data.scan import scan_for_training
from sdlora.data.stream import BatchStream, build_examples
from tests.data_helpers import config, gradient, write_image

SPEC_512 = BucketSpec(base=512, min_side=256, max_side=1024, step=64, no_upscale=False, enabled=True)


def test_bucket_list_for_512():
    buckets = make_buckets(SPEC_512)
    assert len(buckets) == 17
    assert (512, 512) in buckets and (576, 448) in buckets and (1024, 256) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in buckets)
    assert all(256 <= side <= 1024 for b in buckets for side in b)
    assert all((h, w) in buckets for w, h in buckets)


def test_each_image_goes_to_closest_aspect_ratio():
    buckets = make_buckets(SPEC_512)
    cases = {(1024, 768): (576, 448), (768, 1024): (448, 576), (500, 500): (512, 512),
             (2000, 500): (1024, 256), (300, 1200): (256, 1024), (640, 360): (640, 384)}
    assert {size: bucket_for(size, SPEC_512, buckets) for size in cases} == cases


def test_no_upscale_and_disabled():
    no_up = BucketSpec(512, 256, 1024, 64, True, True)
    assert bucket_for((300, 200), no_up, make_buckets(no_up)) == (256, 192)  # own size, rounded down
    assert bucket_for((1024, 768), no_up, make_buckets(no_up)) == (576, 448)  # large: normal bucket
    off = BucketSpec(512, 256, 1024, 64, False, False)
    assert make_buckets(off) == [(512, 512)] and bucket_for((2000, 500), off, [(512, 512)]) == (512, 512)


def test_defaults_follow_resolution():
    cfg = config({"resolution": 512})
    assert bucket_spec(cfg.data, 512) == SPEC_512
    assert make_buckets(bucket_spec(cfg.data, 64)) == [(64, 64)]


def test_batches_never_mix_buckets_and_histogram(tmp_path):
    sizes = [(256, 256)] * 5 + [(512, 256)] * 3 + [(256, 512)] * 2
    for i, size in enumerate(sizes):
        write_image(tmp_path, f"{i:02d}.png", gradient(size), caption=f"img {i}")
    cfg = config({"path": str(tmp_path), "resolution": 256, "repeats": 2})
    examples = build_examples(scan_for_training(cfg.data), cfg.data)
    stream = BatchStream(examples, cfg.data, batch_size=4, seed=1)
    assert stream.bucket_histogram() == [((192, 320), 2), ((256, 256), 5), ((320, 192), 3)]
    # 10 / 6 / 4 samples per bucket -> 3 + 2 + 1 batches of at most 4
    assert stream.batches_per_epoch == 6
    for epoch in range(3):
        batches = [stream.batch(epoch * 6 + i) for i in range(6)]
        assert all(len({item.example.bucket for item in b.items}) == 1 for b in batches)
        assert sorted(len(b.items) for b in batches) == [2, 2, 4, 4, 4, 4]
        seen = sorted(item.slot for b in batches for item in b.items)
        assert seen == list(range(20))  # every image x repeat exactly once per epoch
        assert all(b.pixels.shape[2:] == b.bucket[::-1] for b in batches[:1])
    assert format_histogram(stream.bucket_histogram(), width=10)[1].split() == ["256x256", "5", "##########"]
