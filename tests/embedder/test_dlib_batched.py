"""dlib's landmarks and chips for many faces at once are, to the bit, those made one face at a time."""

from __future__ import annotations

import numpy as np
import pytest
from dlib_fixtures import weights_file

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the photos: pip install scikit-image")

from facesearch.embedder.align import ARCFACE_112X112, DLIB_150  # noqa: E402
from facesearch.embedder.crop import crop_face, crop_faces  # noqa: E402
from facesearch.embedder.detect import Detector  # noqa: E402
from facesearch.embedder.dlib.landmarks import dlib_rect  # noqa: E402


@pytest.fixture(scope="module")
def predictor():
    weights_file()
    from facesearch.embedder.dlib.shape_predictor import read_shape_predictor

    return read_shape_predictor()


def test_predict_many_equals_predict_on_faces_and_odd_rectangles(predictor):
    astronaut, camera = skimage_data.astronaut(), skimage_data.camera()  # RGB and grey
    face = Detector().detect(astronaut)[0]
    rng = np.random.default_rng(0)
    images, rects = [astronaut, camera], [dlib_rect(face.landmarks), (180, 60, 330, 210)]
    for _ in range(30):  # anywhere, partly or wholly off the photo, any size
        x, y = rng.integers(-200, 500, 2)
        side = int(rng.integers(10, 400))
        images.append(astronaut if rng.random() < 0.5 else camera)
        rects.append((int(x), int(y), int(x) + side, int(y) + side))

    many = predictor.predict_many(images, rects)

    np.testing.assert_array_equal(many, np.stack([predictor.predict(i, r) for i, r in zip(images, rects)]))
    assert predictor.predict_many([], []).shape == (0, 5, 2)
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict_many([astronaut.astype(np.float32)], rects[:1])


@pytest.mark.parametrize("template", [DLIB_150, ARCFACE_112X112])
def test_crop_faces_equals_crop_face(template):
    photos = [skimage_data.astronaut(), skimage_data.astronaut()[:, ::-1].copy(), skimage_data.astronaut()[::2, ::2]]
    found = Detector().detect_many(photos)
    images = [p for p, dets in zip(photos, found) for _ in dets]
    landmarks = [d.landmarks for dets in found for d in dets]
    assert len(images) == 3
    for got, (image, points) in zip(crop_faces(images, landmarks, template), zip(images, landmarks)):
        np.testing.assert_array_equal(got, crop_face(image, points, template))
