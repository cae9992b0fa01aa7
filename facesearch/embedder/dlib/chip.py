"""The 150x150 face chip of dlib's ResNet, as dlib cuts it, in numpy.

dlib cuts the chip from its 5-point landmarks (eye corners and nose base) with 25% padding
(`get_face_chip_details` + `extract_image_chip`, dlib/image_transforms/interpolation.h).
`extract_dlib_chip` reproduces it. At run time facesearch's own detector gives other points (eye
centres, nose tip, mouth corners); for this model the Embedder finds dlib's points with the ported
predictor (facesearch.embedder.dlib.landmarks) and cuts the chip here. The template `dlib-150`
(`facesearch.embedder.align.DLIB_150`, fitted with this module by benchmarks/dlib_template.py) places MTCNN's
points in dlib's chip frame, for `facesearch.embedder.align.align_face`.
Imports no TensorFlow and no dlib.
"""

from __future__ import annotations

import functools

import numpy as np

from facesearch.embedder.align import DLIB_150, similarity_transform

CHIP_SIZE = 150
CHIP_PADDING = 0.25
ALIGNMENT_TEMPLATE = DLIB_150.name

# dlib's mean face for its 5-point predictor, in [0, 1] of an unpadded chip (interpolation.h):
# outer and inner corner of the eye on the image's right, the same for the left eye, nose base.
DLIB_MEAN_FACE_5 = np.array([
    [0.8595674595992, 0.2134981538014], [0.6460604764104, 0.2289674387677],
    [0.1205750620789, 0.2137274526848], [0.3340850613712, 0.2290642403242],
    [0.4901123135679, 0.6277975316475]])

@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) float64 pixel coordinates of a size x size chip (read-only, shared)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs


def dlib_template_points(size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> np.ndarray:
    """(5, 2) float64: where dlib puts its 5 landmarks in a `size` chip with `padding`."""
    return (padding + DLIB_MEAN_FACE_5) / (2 * padding + 1) * size


def chip_to_image(landmarks: np.ndarray, size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> np.ndarray:
    """dlib's map from chip pixels to photo pixels, as a (2, 3) float64 matrix.

    dlib fits a similarity (scale s, angle) from its template to the landmarks, then samples a
    rectangle of size*s pixels centred on the image of the chip centre, its corner pixels mapped
    onto the chip's: so the step between chip pixels is (size*s - 1) / (size - 1), not s.

    Args:
        landmarks: (5, 2) (x, y) from dlib's 5-point shape predictor, in dlib's order.
    """
    fit = similarity_transform(dlib_template_points(size, padding), landmarks)
    linear = fit[:, :2]
    scale = float(np.hypot(*linear[:, 0]))
    centre = fit @ np.array([size / 2, size / 2, 1.0])
    step = (size * scale - 1) / (size - 1)
    rotation = linear / scale * step
    return np.hstack([rotation, (centre - rotation @ np.full(2, (size - 1) / 2))[:, None]])


def extract_dlib_chip(image: np.ndarray, landmarks: np.ndarray, size: int = CHIP_SIZE,
                      padding: float = CHIP_PADDING) -> np.ndarray:
    """dlib.get_face_chip(image, shape, size, padding) in numpy.

    Bilinear, truncated to uint8, black where a sample's 2x2 neighbourhood leaves the photo.
    dlib first halves the photo with `pyramid_down<2>` when the face spans more than ~2 photo
    pixels per chip pixel; this function does not (on LFW the scale is 0.6-1.1).

    Args:
        image: (H, W, 3) uint8 RGB.
        landmarks: (5, 2) from dlib's 5-point shape predictor.

    Returns:
        (size, size, 3) uint8.
    """
    matrix = chip_to_image(landmarks, size, padding)
    ys, xs = _grid(size)
    px = matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2]
    py = matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2]
    left, top = np.floor(px).astype(np.int64), np.floor(py).astype(np.int64)
    h, w = image.shape[:2]
    inside = (left >= 0) & (top >= 0) & (left + 1 < w) & (top + 1 < h)
    left, top = np.where(inside, left, 0), np.where(inside, top, 0)
    fx, fy = px - left, py - top
    flat = image.reshape(h * w, -1)
    corner = top * w + left  # the top-left neighbour of every sample, as a row of `flat`

    def at(offset: int) -> np.ndarray:
        # Gather first (never the whole photo in float; np.take is ~5x faster than []), then lay the
        # channels out as planes (c, y, x): the arithmetic below then runs over whole planes, not
        # 3 values at a time (2-3x faster; the same operations on the same numbers).
        return np.ascontiguousarray(np.moveaxis(np.take(flat, corner + offset, axis=0), 2, 0), dtype=np.float64)

    value = ((1 - fy) * ((1 - fx) * at(0) + fx * at(1))
             + fy * ((1 - fx) * at(w) + fx * at(w + 1)))
    chip = np.ascontiguousarray(np.moveaxis(np.clip(value, 0, 255).astype(np.uint8), 0, 2))
    chip[~inside] = 0
    return chip
