"""Scanning: flat folders, kohya N_name repeats, several datasets, caption sources, config shape."""
import pytest
import tomllib

from sdlora.config import dump_toml, from_dict, load_config
from sdlora.data.scan import scan_all, scan_for_training
from sdlora.data.stream import BatchStream, build_examples
from sdlora.errors import ConfigError, DataError
from tests.data_helpers import config, gradient, write_image


def test_flat_folder_with_captions_sorted_by_name(tmp_path):
    write_image(tmp_path, "b.png", caption="a b")
    write_image(tmp_path, "a.jpg", caption=" a a \n")
    (tmp_path / "notes.md").write_text("not an image")
    records = scan_for_training(config({"path": str(tmp_path)}).data)
    assert [r.path.name for r in records] == ["a.jpg", "b.png"]
    assert [r.caption for r in records] == ["a a", "a b"]
    assert [r.repeats for r in records] == [1, 1]


def test_kohya_repeat_subfolders(tmp_path):
    write_image(tmp_path / "10_mychar", "x.png", caption="x")
    write_image(tmp_path / "10_mychar", "y.png", caption="y")
    write_image(tmp_path / "3_style", "z.png", caption="z")
    write_image(tmp_path / "not_repeats", "ignored.png", caption="no")
    write_image(tmp_path, "top.png", caption="top")
    cfg = config({"path": str(tmp_path), "repeats": 2}, train={"batch_size": 1})
    records = scan_for_training(cfg.data)
    assert {r.path.name: r.repeats for r in records} == {"top.png": 2, "x.png": 10, "y.png": 10, "z.png": 3}
    stream = BatchStream(build_examples(records, cfg.data), cfg.data, 1, 0)
    assert stream.samples_per_epoch == 2 + 10 + 10 + 3 == 25
    assert stream.batches_per_epoch == 25


def test_several_datasets_each_with_own_settings(tmp_path):
    write_image(tmp_path / "one", "a.png", caption="red, cube")
    write_image(tmp_path / "two", "b.png", gradient((128, 64)), caption="blue ball", ext=".caption")
    write_image(tmp_path / "two", "c.png", gradient((128, 64)))  # no caption -> default
    cfg = config({"resolution": 64, "datasets": [
        {"path": str(tmp_path / "one"), "repeats": 4, "trigger_word": "sks"},
        {"path": str(tmp_path / "two"), "caption_extension": ".caption", "resolution": 128,
         "missing_caption": "default", "default_caption": "a photo of zwx"},
    ]})
    records = scan_for_training(cfg.data)
    assert [(r.path.name, r.caption, r.caption_source, r.repeats, r.trigger_word, r.dataset.resolution)
            for r in records] == [
        ("a.png", "red, cube", "file", 4, "sks", 64),
        ("b.png", "blue ball", "file", 1, "", 128),
        ("c.png", "a photo of zwx", "default", 1, "", 128),
    ]
    examples = build_examples(records, cfg.data)
    assert [e.bucket for e in examples] == [(64, 64), (192, 64), (192, 64)]


def test_caption_fallbacks_and_never_silently_empty(tmp_path):
    write_image(tmp_path, "my_cat_photo.png")
    base = {"path": str(tmp_path)}
    with pytest.raises(DataError, match="1 image\\(s\\) have no caption file: my_cat_photo.png"):
        scan_for_training(config(base).data)
    assert scan_all(config(base | {"missing_caption": "filename"}).data)[0].caption == "my cat photo"
    assert scan_all(config(base | {"missing_caption": "empty"}).data)[0].caption == ""
    got = scan_all(config(base | {"missing_caption": "default", "default_caption": "photo of sks cat"}).data)[0]
    assert (got.caption, got.caption_source) == ("photo of sks cat", "default")


def test_datasets_round_trip_through_toml(tmp_path):
    (tmp_path / "imgs").mkdir()
    text = f'''
[data]
resolution = 64
[[data.datasets]]
path = "imgs"
repeats = 5
trigger_word = "sks dog"
[[data.datasets]]
path = "{tmp_path}/imgs"
caption_extension = ".caption"
'''
    (tmp_path / "cfg.toml").write_text(text)
    cfg = load_config(tmp_path / "cfg.toml")
    assert cfg.data.datasets[0].path == str(tmp_path / "imgs")  # relative to the config file
    assert (cfg.data.datasets[0].repeats, cfg.data.datasets[1].caption_extension) == (5, ".caption")
    again = from_dict(tomllib.loads(dump_toml(cfg)))
    assert again == cfg


@pytest.mark.parametrize("entry, message", [
    ({"path": "x", "repets": 2}, "Unknown config key 'data.datasets\\[0\\].repets'. Did you mean 'repeats'?"),
    ({"path": "x", "repeats": "2"}, "data.datasets\\[0\\].repeats must be int, got str"),
    ({"path": "x", "caption_extension": ".md"}, "data.datasets\\[0\\].caption_extension = '.md' is not allowed"),
    ({"path": "x", "repeats": 0}, "data.datasets\\[0\\].repeats = 0 is below the minimum 1"),
    ({"repeats": 2}, "data.datasets\\[0\\].path is empty"),
])
def test_dataset_table_errors_name_the_key(entry, message):
    with pytest.raises(ConfigError, match=message):
        from_dict({"data": {"datasets": [entry]}})


def test_path_and_datasets_are_exclusive():
    with pytest.raises(ConfigError, match="either data.path or data.datasets"):
        from_dict({"data": {"path": "a", "datasets": [{"path": "b"}]}})
    with pytest.raises(ConfigError, match="must be a list of tables"):
        from_dict({"data": {"datasets": {"path": "b"}}})
