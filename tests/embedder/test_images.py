"""read_image on the awkward files real galleries contain."""

import io

import numpy as np
import pytest
from PIL import Image

from facesearch.embedder.core.errors import ImageReadError
from facesearch.embedder.images import read_image, resize


def _gradient(h=40, w=30):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_rgb_png_round_trip(tmp_path):
    pixels = _gradient()
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), pixels)


def test_exif_orientation_is_applied(tmp_path):
    pixels = _gradient(40, 30)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rot.png", exif=exif)
    out = read_image(tmp_path / "rot.png")
    assert out.shape == (30, 40, 3)
    np.testing.assert_array_equal(out, np.rot90(pixels, k=-1))


def test_grayscale_becomes_three_equal_channels(tmp_path):
    grey = _gradient()[..., 0]
    Image.fromarray(grey, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (40, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], grey)


def test_alpha_is_composited_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(out[3, 3], [255, 255, 255])


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # pure red in CMYK
    out = read_image(tmp_path / "c.jpg")
    assert out.shape == (16, 16, 3)
    r, g, b = out.reshape(-1, 3).mean(axis=0)
    assert r > 200 and g < 60 and b < 60, (r, g, b)


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path):
    values = np.array([[0, 257 * 100], [257 * 200, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    np.testing.assert_array_equal(out[..., 0], [[0, 100], [200, 255]])


def test_non_ascii_path(tmp_path):
    folder = tmp_path / "Zoë Ødegård 東京"
    folder.mkdir()
    Image.fromarray(_gradient()).save(folder / "visage é.jpg")
    assert read_image(folder / "visage é.jpg").shape == (40, 30, 3)


def test_large_jpeg_draft_keeps_at_least_min_size(tmp_path):
    Image.fromarray(np.full((800, 600, 3), 90, np.uint8)).save(tmp_path / "big.jpg")
    out = read_image(tmp_path / "big.jpg", min_size=(112, 96))
    assert out.shape[0] >= 112 and out.shape[1] >= 96
    assert out.shape[0] < 800  # decoded at a reduced DCT scale


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("empty.jpg", b"", "empty file"),
        ("notes.jpg", b"this is not a picture\n", "not an image"),
    ],
)
def test_unreadable_files_raise_naming_the_file(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as info:
        read_image(tmp_path / name)
    assert name in str(info.value)


def test_truncated_jpeg_raises(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_gradient(200, 200)).save(buf, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageReadError, match="truncated"):
        read_image(tmp_path / "cut.jpg")


def test_missing_file_raises(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nope.png")


def test_resize_shape_and_identity():
    img = _gradient(40, 30)
    assert resize(img, 40, 30) is img
    assert resize(img, 112, 96).shape == (112, 96, 3)
