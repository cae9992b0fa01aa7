"""Reading real photos: any size, EXIF rotation, grayscale, alpha, CMYK, 16-bit, non-ASCII paths."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from facesearch.embedder.core.errors import ImageReadError

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_EXIF_ORIENTATION = 0x0112


def read_image(path: str | os.PathLike, *, min_size: tuple[int, int] | None = None,
               data: bytes | None = None) -> np.ndarray:
    """Read an image file as upright 8-bit RGB.

    Args:
        path: any image file Pillow reads.
        min_size: optional (height, width) the caller needs at least; large JPEGs are then decoded
            at a reduced scale (libjpeg's DCT scaling), which is several times faster for photos
            that will be shrunk anyway.
        data: the file's bytes, when the caller has read them already (one read per file: the
            photo loop hashes and decodes the same bytes); `path` then only names the photo.

    Returns:
        (H, W, 3) uint8 RGB, EXIF orientation applied, alpha composited over white.

    Raises:
        ImageReadError: the file is missing, empty, truncated or not an image.
    """
    return read_image_reduced(path, min_size=min_size, data=data)[0]


def read_image_reduced(path: str | os.PathLike, *, min_size: tuple[int, int] | None = None,
                       data: bytes | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """`read_image`, with the factors (x, y) from full-size pixels to the returned ones (1.0 unless reduced).

    With `min_size`, a JPEG at least twice as large is decoded at 1/2, 1/4 or 1/8 scale, the
    smallest that still covers `min_size` on both sides (EXIF rotation may swap them).
    """
    path = Path(path)
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as img:
            full = img.size
            if min_size is not None and img.format == "JPEG":
                _draft_at_least(img, min_size)
            img.load()  # decode now, so a truncated file fails here and not later
            factors = (img.size[0] / full[0], img.size[1] / full[1])
            orientation = _orientation(img)
            if orientation in (5, 6, 7, 8):  # turning swaps the axes
                factors = factors[::-1]
            if (method := _TRANSPOSE.get(orientation)) is not None:
                img = img.transpose(method)
            return _to_rgb(img), factors
    except FileNotFoundError:
        raise ImageReadError(path, "no such file") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a directory") from None
    except UnidentifiedImageError:
        reason = "empty file" if (_is_empty(path) if data is None else not data) else \
            "not an image file Pillow can identify"
        raise ImageReadError(path, reason) from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(path, f"too many pixels ({e})") from None
    except (OSError, ValueError, SyntaxError, TypeError, struct.error, IndexError, KeyError, EOFError,
            ZeroDivisionError) as e:
        # Pillow reports truncated and corrupt data as OSError/ValueError/SyntaxError, and hostile EXIF or
        # TIFF tags as the others (seen: TypeError, struct.error): all of them are a bad file, not a bug here.
        raise ImageReadError(path, f"corrupt or truncated image ({type(e).__name__}: {e})") from None


# EXIF orientation -> the turn that makes the photo upright (what ImageOps.exif_transpose does, without
# rewriting the EXIF block, which fails on hostile tags although the pixels are fine).
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8); 1 when there is none or the EXIF block cannot be parsed."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except (SyntaxError, TypeError, ValueError, struct.error, KeyError, IndexError, OSError):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (H, W, 3) uint8 to (height, width, 3) uint8 with antialiased bilinear filtering."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def _draft_at_least(img: Image.Image, min_size: tuple[int, int]) -> None:
    # draft() picks the smallest DCT scale (1/1 .. 1/8) that still covers the requested size.
    # EXIF rotation may swap the axes later, so ask for the larger side on both.
    side = max(min_size)
    img.draft("RGB", (side, side))


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(img, dtype=np.float64)
        if values.max(initial=0) > 255:
            values = values / 257.0  # 0..65535 -> 0..255
        grey = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode == "F":
        grey = np.clip(np.rint(np.asarray(img)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False
