"""dlib's own 5 landmarks and chip for a face MTCNN found: the default model's alignment.

dlib's ResNet was trained on chips cut from dlib's 5-point predictor (eye corners, nose base),
which MTCNN's points (eye centres, nose tip, mouth corners) only approximate. So for the
`dlib-150` template, the Embedder places the rectangle dlib's frontal detector would have drawn
(fitted to MTCNN's 5 points on LFW, benchmarks/dlib_landmarks.py), runs the ported predictor in it
(facesearch.embedder.dlib.shape_predictor) and cuts the chip with dlib's own geometry (facesearch.embedder.dlib.chip).
Imports no TensorFlow and no dlib; the predictor is parsed on first use (~0.5 s), not at import.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from facesearch.embedder.align import similarity_transform

# Where dlib's frontal-detector rectangle sits relative to MTCNN's 5 points. Fitted by
# `python benchmarks/dlib_landmarks.py` (seed 0) on 500 LFW photos where dlib's detector (upsampled
# once) found exactly one face and MTCNN found it too: MTCNN_UNIT is the mean of MTCNN's points in
# the unit frame of dlib's rectangle ((p - top-left) / (right - left)); mapped through the
# least-squares similarity from MTCNN_UNIT to a face's MTCNN points, the rectangle's centre is
# RECT_CENTRE and its side RECT_SIDE (unit-frame means over those faces). On 500 held-out photos the
# predictor then lands within 1% of the inter-ocular distance of its points in dlib's own rectangle
# (mean), and the chip within 1.4% (MTCNN's points through the dlib-150 template: 8.5%).
MTCNN_UNIT = np.array([[0.3302, 0.3087], [0.7257, 0.2997], [0.5300, 0.5349], [0.3587, 0.7441], [0.7119, 0.7364]])
RECT_CENTRE = np.array([0.4996, 0.4975])
RECT_SIDE = 1.0059


def dlib_rect(landmarks: np.ndarray) -> tuple[int, int, int, int]:
    """The rectangle dlib's frontal face detector would give the face with these MTCNN points.

    Args:
        landmarks: (5, 2) MTCNN (x, y): eyes, nose tip, mouth corners (facesearch.embedder.detect order).

    Returns:
        (left, top, right, bottom) integer pixels, dlib's inclusive rectangle (right - left = side).
    """
    fit = similarity_transform(MTCNN_UNIT, landmarks)
    scale = float(np.hypot(*fit[:, 0]))
    cx, cy = fit @ np.append(RECT_CENTRE, 1.0)
    side = RECT_SIDE * scale
    left, top = round(cx - side / 2), round(cy - side / 2)
    return left, top, left + round(side), top + round(side)


def dlib_landmarks(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """dlib's 5 points (eye corners, nose base; facesearch.embedder.dlib.chip order) for one MTCNN face.

    Args:
        image: (H, W, 3) uint8 RGB photo.
        landmarks: (5, 2) the face's MTCNN points.

    Returns:
        (5, 2) float64 integer-valued (x, y), as `dlib.shape_predictor` returns them.
    """
    from facesearch.embedder.dlib.shape_predictor import load_shape_predictor

    return load_shape_predictor().predict(image, dlib_rect(landmarks)).astype(np.float64)


def align_dlib_face(image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The 150x150 chip dlib would cut for this MTCNN face: (150, 150, 3) uint8 RGB."""
    from facesearch.embedder.dlib.chip import extract_dlib_chip

    return extract_dlib_chip(image, dlib_landmarks(image, landmarks))


def align_dlib_faces(images: Sequence[np.ndarray], landmarks: Sequence[np.ndarray]) -> list[np.ndarray]:
    """`align_dlib_face` of many faces (of one photo or several): dlib's predictor runs on all at once.

    Args:
        images: the (H, W, 3) uint8 RGB photo of each face (one array may serve several faces).
        landmarks: each face's (5, 2) MTCNN points.

    Returns:
        One (150, 150, 3) uint8 chip per face, equal to `align_dlib_face`'s.
    """
    from facesearch.embedder.dlib.chip import extract_dlib_chip
    from facesearch.embedder.dlib.shape_predictor import load_shape_predictor

    points = load_shape_predictor().predict_many(images, [dlib_rect(m) for m in landmarks]).astype(np.float64)
    return [extract_dlib_chip(image, p) for image, p in zip(images, points)]
