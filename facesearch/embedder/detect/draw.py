"""A picture of what the detector found: boxes, scores and landmarks drawn on the photo."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from facesearch.embedder.core.atomic import atomic_path
from facesearch.embedder.detect import Detection

# Left eye, right eye, nose, left and right mouth corner.
LANDMARK_COLOURS = ((0, 160, 255), (0, 160, 255), (255, 200, 0), (255, 0, 160), (255, 0, 160))


def draw_detections(image: np.ndarray, detections: Sequence[Detection], out: str | os.PathLike) -> Path:
    """Write `image` with each face's box, score and 5 landmarks drawn on it (format from `out`'s suffix).

    Args:
        image: (H, W, 3) uint8 RGB photo.
        detections: faces found in it.
        out: file to write (atomically).

    Returns:
        The path written.
    """
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(max(image.shape[:2]) / 250))
    for n, d in enumerate(detections, 1):
        draw.rectangle(d.box, outline=(0, 255, 0), width=width)
        draw.text((d.box[0] + 2, d.box[1] + 2), f"{n}: {d.score:.2f}", fill=(0, 255, 0))
        for (x, y), colour in zip(d.landmarks, LANDMARK_COLOURS):
            r = width + 1
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
    return save_image(canvas, Path(out))


def save_image(img: Image.Image, path: Path) -> Path:
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt)
    return path
