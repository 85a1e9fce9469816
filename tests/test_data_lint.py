"""Lint: a folder with 14 kinds of bad input; errors stop training, warnings are reported,
and nothing in the folder is changed."""
import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from sdlora.cli import main
from sdlora.data.lint import lint_dataset
from sdlora.errors import DataError
from sdlora.train.setup import build_stream
from tests.data_helpers import config, gradient, write_image

LONG_CAPTION = " ".join(["red"] * 80)  # 80 tokens, the text encoder keeps 75


def make_bad_folder(folder):
    write_image(folder, "good.png", gradient((64, 64), 1), caption="good")
    write_image(folder, "cmyk_ok.jpg", Image.new("CMYK", (64, 64), (0, 90, 90, 0)), caption="fine")
    write_image(folder, "gray16_ok.png", Image.fromarray(np.full((64, 64), 40000, np.uint16)), caption="fine")
    (folder / "zero.png").write_bytes(b"")  # 1 zero-byte
    (folder / "zero.txt").write_text("x")
    (folder / "notes.png").write_text("these are my notes")  # 2 text with an image extension
    (folder / "notes.txt").write_text("x")
    (folder / "page.jpg").write_text("<html><body>404</body></html>")  # 3 html saved as .jpg
    (folder / "page.txt").write_text("x")
    good_png = io.BytesIO()
    gradient((64, 64), 2).save(good_png, "PNG")
    (folder / "cut.png").write_bytes(good_png.getvalue()[:200])  # 4 truncated png
    (folder / "cut.txt").write_text("x")
    good_jpg = io.BytesIO()
    gradient((64, 64), 3).save(good_jpg, "JPEG")
    (folder / "cut_jpeg.jpg").write_bytes(good_jpg.getvalue()[: len(good_jpg.getvalue()) // 2])  # 5 truncated jpeg
    (folder / "cut_jpeg.txt").write_text("x")
    write_image(folder, "tiny.png", gradient((16, 16)), caption="tiny")  # 6 smaller than resolution
    (folder / "good_copy.png").write_bytes((folder / "good.png").read_bytes())  # 7 exact duplicate
    (folder / "good_copy.txt").write_text("good")
    write_image(folder, "nocaption.png", gradient((64, 64), 4))  # 8 missing caption
    write_image(folder, "long.png", gradient((64, 64), 5), caption=LONG_CAPTION)  # 9 caption > 75 tokens
    write_image(folder, "café_ñ.png", gradient((64, 64), 6), caption="unicode")  # 10 unicode name
    write_image(folder, "blank.png", gradient((64, 64), 7), caption="")  # 11 empty caption file
    gradient((64, 64), 8).save(folder / "fake.jpg", "PNG")  # 12 PNG with a .jpg extension
    (folder / "fake.txt").write_text("fake")
    (folder / "lonely.txt").write_text("no image")  # 13 caption without an image
    gradient((64, 64), 9).save(folder / "anim.gif")  # 14 a format sdlora does not read


def snapshot(folder):
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_bad_folder_report(tmp_path):
    make_bad_folder(tmp_path)
    before = snapshot(tmp_path)
    report = lint_dataset(config({"path": str(tmp_path), "resolution": 64}).data)
    assert report.images_checked == 15
    assert report.kinds("error") == {"corrupt": 2, "missing-caption": 1, "not-an-image": 2, "zero-byte": 1}
    assert report.kinds("warning") == {
        "duplicate": 1, "empty-caption": 1, "ignored-file": 1, "long-caption": 1, "orphan-caption": 1,
        "small-image": 1, "unicode-name": 1, "wrong-extension": 1,
    }
    flagged = {issue.path.name for issue in report.issues}
    assert not flagged & {"good.png", "cmyk_ok.jpg", "gray16_ok.png"}
    assert "long.png: caption has 80 tokens" in report.format()
    assert snapshot(tmp_path) == before  # nothing modified, moved or deleted


def test_errors_stop_training_before_the_model(tmp_path, capsys):
    make_bad_folder(tmp_path)
    cfg = config({"path": str(tmp_path), "resolution": 64}, model={"path": str(tmp_path / "no-model")})
    with pytest.raises(DataError, match="6 error\\(s\\), 8 warning\\(s\\)"):
        build_stream(cfg, warn=lambda message: None)
    (tmp_path / "cfg.toml").write_text(f'[data]\npath = "{tmp_path}"\nresolution = 64\n'
                                       f'[model]\npath = "{tmp_path / "no-model"}"\n')
    assert main(["lint", str(tmp_path / "cfg.toml")]) == 1
    assert main(["train", str(tmp_path / "cfg.toml"), "--output", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error: the dataset has problems" in err and "zero-byte" in err and "Traceback" not in err


def test_warnings_are_reported_not_fatal(tmp_path):
    write_image(tmp_path, "a.png", gradient((32, 32)), caption="a")
    write_image(tmp_path, "b.png", gradient((64, 64)), caption="b")
    (tmp_path / "b_copy.png").write_bytes((tmp_path / "b.png").read_bytes())
    (tmp_path / "b_copy.txt").write_text("b")
    warnings = []
    stream = build_stream(config({"path": str(tmp_path), "resolution": 64}), warn=warnings.append)
    assert stream.samples_per_epoch == 3
    assert [w.split("]")[0] for w in warnings] == ["warning [small-image", "warning [duplicate"]
