"""Uploaded photos: checked (type, size, pixel count from the header) before anything is decoded.

A photo is decoded only after its header has said how many pixels it has, so a decompression
bomb (a small file that decodes to gigabytes) is refused without being decoded. Decoding itself
goes through `facesearch.embedder.images` (EXIF rotation, grey, alpha, 16-bit), as for files on disk.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from fastapi import HTTPException
from PIL import Image, UnidentifiedImageError

from facesearch.index.storage.photostore import extension_of, sha256_bytes

# Content types accepted besides image/*: what clients send when they do not know (curl for an
# unknown extension, browsers for a file without one).
GENERIC_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})


class UploadRefused(HTTPException):
    """An upload the service will not decode: 413 (too large), 415 (not an image type), 422 (bad bytes)."""

    def __init__(self, status: int, name: str, reason: str):
        super().__init__(status, f"photo '{name}': {reason}")


@dataclass(frozen=True)
class Upload:
    """One uploaded photo, checked but not decoded."""

    name: str  # the client's file name (for messages and answers only; never a path here)
    data: bytes
    sha256: str
    ext: str  # the stored file's extension, from the format the header names
    width: int
    height: int


def check_photo(name: str, content_type: str | None, data: bytes, *, max_pixels: int) -> Upload:
    """Check an uploaded photo from its header only.

    Raises:
        UploadRefused: 415 for a content type that is not an image, 422 for an empty file or one
            whose header no image format matches, 413 for more than `max_pixels` pixels.
    """
    name = _printable(name)
    kind = (content_type or "").split(";")[0].strip().lower()
    if not (kind.startswith("image/") or kind in GENERIC_TYPES):
        raise UploadRefused(415, name, f"content type '{kind}' is not an image; send the photo as image/jpeg, "
                                       "image/png, ... (or application/octet-stream)")
    if not data:
        raise UploadRefused(422, name, "empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is applied below
            with Image.open(io.BytesIO(data)) as img:  # reads the header only
                (width, height), image_format = img.size, img.format
    except Image.DecompressionBombError as e:
        raise UploadRefused(413, name, f"too many pixels ({e}); the limit is {max_pixels:,}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise UploadRefused(422, name, "not an image file (JPEG, PNG, WebP, GIF, BMP or TIFF expected)") from None
    if width * height > max_pixels:
        raise UploadRefused(413, name, f"{width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,} "
                                       "(scale the photo down)")
    return Upload(name, data, sha256_bytes(data), extension_of(image_format), width, height)


def _printable(name: str, limit: int = 200) -> str:
    """A client-supplied file name made safe to echo in answers and logs."""
    return "".join(c if c.isprintable() else "?" for c in name)[:limit] or "upload"
