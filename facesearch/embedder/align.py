"""5-point face alignment: a least-squares similarity transform onto a named template, then a warp.

Landmark order everywhere: left eye, right eye, nose tip, left mouth corner, right mouth corner, with
"left" the point of smaller x in the image (as MTCNN returns them). Coordinates are pixel indices:
pixel (row i, column j) has its centre at (x=j, y=i), as in OpenCV and insightface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from facesearch.embedder.core.errors import ModelSpecError


@dataclass(frozen=True)
class AlignmentTemplate:
    """Where the 5 landmarks go in a crop of `height` x `width` pixels.

    Attributes:
        points: (5, 2) float32 (x, y) target positions in the crop.
        weights: (5,) per-point weights of the least-squares fit onto `points` (a point's residual
            counts `weight` times), or None for equal weights. Part of the template's definition:
            a model trained or fitted with one weighting should be aligned with the same one.
    """

    name: str
    height: int
    width: int
    points: np.ndarray
    weights: np.ndarray | None = None


# insightface's ArcFace template (`insightface.utils.face_align.arcface_dst`), 112x112.
ARCFACE_112X112 = AlignmentTemplate("arcface-112x112", 112, 112, np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32))

# SphereFace / CASIA-WebFace 112x96 crops: the same geometry, 8 px further left (16 px narrower).
SPHEREFACE_112X96 = AlignmentTemplate("sphereface-112x96", 112, 96, ARCFACE_112X112.points - np.float32([8, 0]))

# dlib's face-recognition ResNet (the default model, dlib-resnet-v1) takes the 150x150 chip that dlib
# cuts with 25% padding from its own landmarks (embedder/dlib_chip.py); these are this module's 5
# points in that chip, averaged over 941 LFW faces by benchmarks/dlib_template.py. Equal weights:
# inverse-variance weights (eyes 1; nose tip, mouth corners 1/8) and mouth corners at 1/4 made no
# measurable difference on LFW (README, Measured), so the plain fit stays.
DLIB_150 = AlignmentTemplate("dlib-150", 150, 150, np.array(
    [[46.73, 44.74], [100.61, 44.83], [73.68, 76.55], [49.50, 104.13], [97.39, 104.21]], dtype=np.float32))

TEMPLATES: dict[str, AlignmentTemplate] = {t.name: t for t in (ARCFACE_112X112, SPHEREFACE_112X96, DLIB_150)}

# Model cards naming one of these take their inputs as ready-made crops: no detection, no alignment.
PREALIGNED = frozenset({"none", "aligned", "synthetic"})


def register_template(template: AlignmentTemplate) -> None:
    """Make a template available by name (e.g. for a model with its own crop geometry)."""
    if template.points.shape != (5, 2):
        raise ValueError(f"a template has 5 (x, y) points, got shape {template.points.shape}")
    if template.weights is not None and (np.shape(template.weights) != (5,) or np.any(template.weights < 0)
                                         or not np.any(template.weights > 0)):
        raise ValueError(f"a template's weights are 5 non-negative numbers, not all 0, got {template.weights}")
    TEMPLATES[template.name] = template


def get_template(name: str) -> AlignmentTemplate:
    """The template called `name`.

    Raises:
        ModelSpecError: no template has that name.
    """
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ModelSpecError(f"unknown alignment template '{name}': known are {sorted(TEMPLATES)} "
                             f"(or one of {sorted(PREALIGNED)} for pre-aligned crops)") from None


def similarity_transform(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The similarity (rotation, uniform scale, translation) mapping `src` onto `dst` in least squares.

    Solves  [x'; y'] = [[a, -b], [b, a]] [x; y] + [tx; ty]  for (a, b, tx, ty) over all points
    (no reflection), minimising  sum_i w_i |M [x_i, y_i, 1] - dst_i|^2.

    Args:
        src: (n, 2) points, n >= 2.
        dst: (n, 2) points.
        weights: (n,) non-negative per-point weights, or None for equal weights.

    Returns:
        (2, 3) float64 matrix M with dst ~= M @ [x, y, 1].
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"expected two (n, 2) point sets with n >= 2, got {src.shape} and {dst.shape}")
    x, y = src[:, 0], src[:, 1]
    ones, zeros = np.ones_like(x), np.zeros_like(x)
    rows = np.concatenate([np.stack([x, -y, ones, zeros], 1), np.stack([y, x, zeros, ones], 1)])
    target = np.concatenate([dst[:, 0], dst[:, 1]])
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (len(src),) or np.any(weights < 0):
            raise ValueError(f"expected {len(src)} non-negative weights, got {weights}")
        root = np.sqrt(np.concatenate([weights, weights]))  # each point's x and y rows
        rows, target = rows * root[:, None], target * root
    (a, b, tx, ty), *_ = np.linalg.lstsq(rows, target, rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def warp_affine(image: np.ndarray, matrix: np.ndarray, height: int, width: int) -> np.ndarray:
    """Warp `image` by `matrix` (photo -> crop, pixel-index coordinates) into a (height, width) crop.

    Bilinear; what falls outside the photo is black.

    Args:
        image: (H, W, 3) uint8.
        matrix: (2, 3) forward transform.

    Returns:
        (height, width, 3) uint8.
    """
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    inv = np.linalg.inv(full)[:2]
    # Pillow maps output pixel centres (x + 0.5, y + 0.5) to input continuous coordinates whose
    # pixel centres are also at +0.5; shift the index-coordinate inverse into that convention.
    a, b, c = inv[0]
    d, e, f = inv[1]
    coeffs = (a, b, c + 0.5 - 0.5 * (a + b), d, e, f + 0.5 - 0.5 * (d + e))
    out = Image.fromarray(image).transform((width, height), Image.Transform.AFFINE, coeffs,
                                           resample=Image.Resampling.BILINEAR, fillcolor=(0, 0, 0))
    return np.asarray(out, dtype=np.uint8)


def align_face(image: np.ndarray, landmarks: np.ndarray, template: AlignmentTemplate) -> np.ndarray:
    """Crop one face so that its 5 landmarks land on `template`'s points.

    Args:
        image: (H, W, 3) uint8 RGB photo.
        landmarks: (5, 2) (x, y) in the photo, in the module's landmark order.
        template: where the points go, and the crop size.

    Returns:
        (template.height, template.width, 3) uint8 RGB.
    """
    matrix = similarity_transform(landmarks, template.points, template.weights)
    return warp_affine(image, matrix, template.height, template.width)
