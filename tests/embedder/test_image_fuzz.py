"""Hostile bytes: seeded byte flips of real JPEG, PNG, WebP and TIFF files (EXIF included) are read or refused.

Every mutated file must give an upright (H, W, 3) uint8 image or an `ImageReadError` naming it:
never another exception, which the service would answer with a 500.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from facesearch.embedder.core.errors import ImageReadError
from facesearch.embedder.images import read_image, read_image_reduced

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the photo: pip install scikit-image")
# Pillow warns about the damage it skips (tags larger than the file, corrupt EXIF): expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

FORMATS = {"JPEG": {"quality": 90}, "PNG": {}, "WEBP": {"quality": 80}, "TIFF": {"compression": "tiff_lzw"}}
VARIANTS = 150  # per format: about 2 s in all


def encoded(fmt: str) -> bytes:
    """The astronaut at 128 x 128 with an EXIF block (orientation 6: rotated), in `fmt`."""
    img = Image.fromarray(skimage_data.astronaut()).resize((128, 128))
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "facesearch"  # Make
    out = io.BytesIO()
    img.save(out, format=fmt, exif=exif.tobytes(), **FORMATS[fmt])
    return out.getvalue()


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """Flip 1-16 bytes, truncate, or splice a run of random bytes, at seeded places (the header included)."""
    b = bytearray(data)
    kind = rng.integers(3)
    if kind == 0:
        for i in rng.integers(0, len(b), rng.integers(1, 17)):
            b[i] = int(rng.integers(256))
    elif kind == 1:
        b = b[: rng.integers(1, len(b))]
    else:
        at = int(rng.integers(0, min(len(b), 200)))  # near the start: headers, EXIF, tags
        b[at:at + 8] = rng.integers(0, 256, 8, dtype=np.uint8).tobytes()
    return bytes(b)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_mutated_files_are_read_or_refused_with_an_image_read_error(fmt):
    original = encoded(fmt)
    assert read_image("ok", data=original).shape == (128, 128, 3)
    rng = np.random.default_rng(sum(map(ord, fmt)))
    refused = 0
    for n in range(VARIANTS):
        data, name = mutate(original, rng), f"{fmt}-{n}"
        for reduced in (False, True):
            try:
                image = read_image_reduced(name, data=data, min_size=(32, 32))[0] if reduced else \
                    read_image(name, data=data)
            except ImageReadError as e:
                refused += 1
                assert e.path == name
                continue
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3, (fmt, n, image.shape)
    assert refused > 0  # the mutations do reach the decoder's error paths


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_a_hostile_exif_tag_leaves_the_pixels_readable(fmt):
    # Found by the mutations above (WebP, 1 in 3,000): the Make tag (0x010F, ASCII) renumbered 0x0140 (ColorMap,
    # which Pillow packs as SHORTs) made ImageOps.exif_transpose raise struct.error while rewriting the EXIF.
    original = encoded(fmt)
    at = original.find(b"MM\x00*")  # the EXIF block's TIFF header; its first entry's tag ends at +11
    assert at >= 0 and original[at + 10:at + 12] == b"\x01\x0f"
    hostile = bytearray(original)
    hostile[at + 11] = 0x40
    np.testing.assert_array_equal(read_image("hostile", data=bytes(hostile)), read_image("original", data=original))
