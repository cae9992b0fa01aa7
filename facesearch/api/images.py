"""Images in, as users hold them: a path, a file's bytes, a PIL image or an RGB numpy array.

Everything becomes (a name for messages, the path or the encoded bytes) and goes through
`facesearch.embedder.images` like a file on disk: EXIF rotation, grey, alpha and 16-bit are handled
once, in one place. Arrays and PIL images are encoded as PNG (lossless) on the way in.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING, Union

from facesearch.embedder.core.errors import ImageReadError, NoFaceFoundError

if TYPE_CHECKING:
    import numpy as np
    from PIL.Image import Image as PILImage

    from facesearch.embedder.runtime import Embedder, FaceCrop

ImageInput = Union[str, os.PathLike, bytes, "np.ndarray", "PILImage"]

def photo_source(image: ImageInput) -> tuple[str, Path | None, bytes | None]:
    """(name, path, bytes) of an image input: a path keeps its path and is read later; the rest are bytes.

    Raises:
        ImageReadError: an array of the wrong shape or type, or an input of another kind.
    """
    import numpy as np  # here, not at import: `import facesearch` and `facesearch --help` stay light

    if isinstance(image, (str, os.PathLike)):
        return str(image), Path(image), None
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "<bytes>", None, bytes(image)
    if isinstance(image, np.ndarray):
        return "<array>", None, _png(_array_image(image))
    from PIL import Image

    if isinstance(image, Image.Image):
        return "<PIL image>", None, _png(image)
    raise ImageReadError(f"<{type(image).__name__}>", "expected a path, the file's bytes, a PIL image or an "
                                                       "(H, W, 3) uint8 RGB numpy array")


def photo_bytes(image: ImageInput) -> tuple[str, bytes]:
    """(name, encoded bytes) of an image input; a path's file is read.

    Raises:
        ImageReadError: the file cannot be read, or the input is not an image (see `photo_source`).
    """
    name, path, data = photo_source(image)
    if data is None:
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageReadError(path, e.strerror or str(e)) from None
    return name, data


def faces_in(embedder: Embedder, image: ImageInput) -> tuple[str, list[FaceCrop]]:
    """The image's name and its faces, aligned for `embedder`, highest detector score first.

    Raises:
        ImageReadError: the image cannot be decoded.
        NoFaceFoundError: it shows no face.
    """
    from facesearch.index.query import NO_FACE_HINT

    name, path, data = photo_source(image)
    (found,) = embedder.faces_in_files([(path if path is not None else name, data)])
    if isinstance(found, ImageReadError):
        raise found
    if not found:
        raise NoFaceFoundError(name, NO_FACE_HINT)
    return name, found


def decoded(image: ImageInput) -> tuple[str, np.ndarray]:
    """The image's name and its pixels, (H, W, 3) uint8 RGB, upright."""
    from facesearch.embedder.images import read_image

    name, path, data = photo_source(image)
    return name, read_image(path if path is not None else name, data=data)


def _array_image(a: np.ndarray):
    import numpy as np
    from PIL import Image

    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4))):
        raise ImageReadError("<array>", f"expected an (H, W, 3) uint8 RGB array (or (H, W) grey, (H, W, 4) RGBA), "
                                        f"got shape {a.shape} dtype {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    return Image.fromarray(np.ascontiguousarray(a))


def _png(img: PILImage) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()
