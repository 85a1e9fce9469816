"""Latent cache (memory, disk) and text-embedding cache: hits, invalidation, exact values."""
import pytest
import torch

from sdlora.data.scan import scan_for_training
from sdlora.data.stream import BatchStream, build_examples
from sdlora.models.loading import builtin_model_path, load_base_model
from sdlora.models.prompts import PromptEncoder
from sdlora.train.inputs import LatentSource, TextSource
from tests.data_helpers import config, gradient, write_image


@pytest.fixture(scope="module")
def tiny():
    from sdlora.config import from_dict

    return load_base_model(from_dict({"model": {"path": "builtin:tiny-sd15"}}).model)


def make_data(folder):
    for i in range(3):
        write_image(folder, f"{i}.png", gradient((64, 64), i), caption=f"shape {i}, red, plain")
    write_image(folder, "wide.png", gradient((128, 64), 7), caption="wide, red")


def stream_for(folder, batch_size=2, **data):
    cfg = config({"path": str(folder), "resolution": 64, "bucket_step": 32, **data})
    examples = build_examples(scan_for_training(cfg.data), cfg.data)
    return cfg, BatchStream(examples, cfg.data, batch_size, seed=3)


def run_epoch(stream, source, epoch):
    n = stream.batches_per_epoch
    return [source.latents(stream.batch(epoch * n + i), torch.Generator().manual_seed(0)) for i in range(n)]


def test_memory_cache_hits_on_second_epoch_and_equals_uncached(tmp_path, tiny):
    make_data(tmp_path)
    cfg, stream = stream_for(tmp_path, cache_latents="memory", latents="deterministic")
    assert stream.batches_per_epoch == 3  # (64, 64) x 3 -> 2 batches, (96, 32) x 1 -> 1 batch
    cached = LatentSource(tiny.vae, cfg.data)
    first = run_epoch(stream, cached, 0)
    assert (cached.cache.hits, cached.cache.misses) == (0, 4)
    second = run_epoch(stream, cached, 1)
    assert (cached.cache.hits, cached.cache.misses) == (4, 4)
    plain_cfg, _ = stream_for(tmp_path, latents="deterministic")
    plain = run_epoch(stream, LatentSource(tiny.vae, plain_cfg.data), 1)
    assert max((a - b).abs().max().item() for a, b in zip(second, plain)) <= 1e-6
    assert sorted(t.shape[-2:] for t in first) == [(4, 12), (8, 8), (8, 8)]


def test_random_flip_caches_both_orientations(tmp_path, tiny):
    make_data(tmp_path)
    cfg, stream = stream_for(tmp_path, cache_latents="memory", random_flip=True)
    source = LatentSource(tiny.vae, cfg.data)
    drawn = set()
    for epoch in range(6):
        run_epoch(stream, source, epoch)
        n = stream.batches_per_epoch
        drawn |= {(item.slot, item.flip) for i in range(n) for item in stream.batch(epoch * n + i).items}
    assert len(source.cache.memory) == source.cache.misses == len(drawn) == 8  # 4 images x 2 flips
    assert source.cache.hits == 6 * 4 - 8


def test_disk_cache_survives_runs_and_invalidates(tmp_path, tiny):
    data, cache_dir = tmp_path / "data", tmp_path / "cache"
    make_data(data)
    settings = dict(cache_latents="disk", cache_dir=str(cache_dir))
    cfg, stream = stream_for(data, **settings)
    run_epoch(stream, LatentSource(tiny.vae, cfg.data), 0)
    assert len(list(cache_dir.rglob("*.safetensors"))) == 4
    again = LatentSource(tiny.vae, cfg.data)  # a new run reads the disk entries
    run_epoch(stream, again, 0)
    assert (again.cache.hits, again.cache.misses) == (4, 0)
    gradient((64, 64), 42).save(data / "1.png")  # one image changed
    cfg, stream = stream_for(data, **settings)
    changed = LatentSource(tiny.vae, cfg.data)
    run_epoch(stream, changed, 0)
    assert (changed.cache.hits, changed.cache.misses) == (3, 1)
    cfg, stream = stream_for(data, center_crop=False, **settings)  # other crops: other keys
    cropped = LatentSource(tiny.vae, cfg.data)
    run_epoch(stream, cropped, 0)
    assert cropped.cache.misses >= 1
    other_vae = load_base_model(config({}, model={"path": str(builtin_model_path("tiny-sd15"))}).model).vae
    torch.nn.init.normal_(other_vae.encoder.conv_in.weight)
    cfg, stream = stream_for(data, **settings)
    fresh = LatentSource(other_vae, cfg.data)
    run_epoch(stream, fresh, 0)
    assert (fresh.cache.hits, fresh.cache.misses) == (0, 4)


def test_text_cache_per_drawn_caption_is_exact(tmp_path, tiny):
    make_data(tmp_path)
    cfg, stream = stream_for(tmp_path, batch_size=1, shuffle_tags=True, caption_dropout_rate=0.3)
    encode = PromptEncoder("sd15", [tiny.tokenizer], [tiny.text_encoder])
    cached = TextSource(encode, cache_enabled=True, text_encoder_trained=False)
    plain = TextSource(encode, cache_enabled=False, text_encoder_trained=False)
    captions = [stream.batch(i).captions for i in range(40)]
    diffs = [(cached.embeddings(c).hidden - plain.embeddings(c).hidden).abs().max().item() for c in captions]
    assert max(diffs) <= 1e-6
    distinct = len({c[0] for c in captions})
    assert (cached.cache.misses, cached.cache.hits) == (distinct, 40 - distinct)
    assert distinct == DISTINCT_CAPTIONS_IN_40_DRAWS
    trained = TextSource(encode, cache_enabled=True, text_encoder_trained=True)
    assert trained.cache is None  # never cached while the text encoder learns


DISTINCT_CAPTIONS_IN_40_DRAWS = 15  # shuffles of 3-tag captions repeat, and ""
