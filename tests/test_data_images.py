"""Image loading: EXIF orientation, transparency on a background, CMYK, 16-bit, grayscale, formats."""
import random

import numpy as np
import pytest
from PIL import Image

from sdlora.data.images import load_training_array, open_rgb, plan_crop, upright_size
from tests.data_helpers import gradient


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.jpg"
    image.save(path, exif=exif, quality=95)
    assert upright_size(path) == (20, 40)
    upright = np.asarray(open_rgb(path))
    assert upright.shape == (40, 20, 3)
    assert upright[2, 10, 0] > 200 and upright[2, 10, 2] < 50  # red ends up on top
    assert upright[37, 10, 2] > 200


@pytest.mark.parametrize("background, expected", [("white", 255), ("black", 0), ("gray", 128)])
def test_rgba_composited_on_background(tmp_path, background, expected):
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    image.putpixel((0, 0), (10, 20, 30, 255))
    image.save(tmp_path / "a.png")
    rgb = np.asarray(open_rgb(tmp_path / "a.png", background))
    assert rgb[0, 0].tolist() == [10, 20, 30]
    assert rgb[5, 5].tolist() == [expected] * 3


def test_la_and_palette_transparency(tmp_path):
    Image.new("LA", (4, 4), (100, 0)).save(tmp_path / "la.png")
    assert np.asarray(open_rgb(tmp_path / "la.png", "black")).max() == 0
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((1, 1), 1)
    palette.save(tmp_path / "p.png", transparency=0)
    rgb = np.asarray(open_rgb(tmp_path / "p.png", "white"))
    assert rgb[0, 0].tolist() == [255, 255, 255] and rgb[1, 1].tolist() == [0, 255, 0]


def test_cmyk_16bit_and_grayscale_converted(tmp_path):
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    cmyk = np.asarray(open_rgb(tmp_path / "cmyk.jpg"))
    assert cmyk[0, 0, 0] > 200 and cmyk[0, 0, 1] < 60  # red
    sixteen = Image.fromarray(np.array([[65535, 32768], [0, 257]], dtype=np.uint16))
    sixteen.save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert np.asarray(open_rgb(tmp_path / "g16.png"))[..., 0].tolist() == [[255, 128], [0, 1]]
    Image.new("L", (2, 2), 77).save(tmp_path / "gray.bmp")
    assert np.asarray(open_rgb(tmp_path / "gray.bmp")).tolist() == [[[77] * 3] * 2] * 2
    Image.new("1", (2, 2), 1).save(tmp_path / "bw.png")
    assert np.asarray(open_rgb(tmp_path / "bw.png")).min() == 255


@pytest.mark.parametrize("ext", [".png", ".jpg", ".jpeg", ".webp", ".bmp"])
def test_every_supported_format_loads(tmp_path, ext):
    path = tmp_path / f"img{ext}"
    gradient((96, 64)).save(path)
    crop = plan_crop(upright_size(path), (64, 64), True, random.Random(0))
    assert (crop.resized, crop.left, crop.top) == ((96, 64), 16, 0)
    array = load_training_array(path, crop, flip=False)
    assert array.shape == (3, 64, 64) and array.dtype == np.float32
    assert -1.0 <= array.min() and array.max() <= 1.0


def test_crop_and_flip(tmp_path):
    path = tmp_path / "g.png"
    gradient((64, 32)).save(path)
    crop = plan_crop((64, 32), (64, 64), True, random.Random(0))  # upscaled to cover
    assert (crop.resized, crop.left, crop.top) == ((128, 64), 32, 0)
    random_crop = plan_crop((64, 32), (32, 32), False, random.Random(3))
    assert random_crop.resized == (64, 32) and 0 <= random_crop.left <= 32 and random_crop.top == 0
    plain = load_training_array(path, plan_crop((64, 32), (64, 32), True, None), flip=False)
    flipped = load_training_array(path, plan_crop((64, 32), (64, 32), True, None), flip=True)
    assert np.array_equal(plain[:, :, ::-1], flipped)
