"""dlib's 150x150 chip geometry: the numpy chip matches dlib.get_face_chip; the aligner's `dlib-150` template."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from dlib_fixtures import dlib_faces  # noqa: E402

from facesearch.embedder.align import get_template  # noqa: E402
from facesearch.embedder.dlib.chip import DLIB_150, chip_to_image, dlib_template_points, extract_dlib_chip  # noqa: E402


def test_template_points_in_the_chip():
    # ((0.25 + t) / 1.5) * 150 for dlib's mean face (../shared/notes/dlib-resnet.md).
    np.testing.assert_allclose(dlib_template_points(), [[110.957, 46.350], [89.606, 47.897], [37.058, 46.373],
                                                        [58.409, 47.906], [74.011, 87.780]], atol=1e-3)


def test_chip_to_image_steps_by_rect_corners():
    # Landmarks exactly on the template: scale 1, so the chip samples the photo half a pixel off
    # (the rectangle's centre 75 maps to the chip's centre pixel 74.5).
    np.testing.assert_allclose(chip_to_image(dlib_template_points()), [[1, 0, 0.5], [0, 1, 0.5]], atol=1e-9)
    # Twice as large a face: the step is (150 * 2 - 1) / 149, not 2.
    matrix = chip_to_image(dlib_template_points() * 2)
    np.testing.assert_allclose(np.diag(matrix[:, :2]), [299 / 149] * 2, rtol=1e-9)


def test_chip_is_black_outside_the_photo():
    photo = np.full((40, 40, 3), 200, np.uint8)
    chip = extract_dlib_chip(photo, dlib_template_points() / 2)  # the chip reaches past the photo
    assert chip.shape == (150, 150, 3)
    assert chip[0, 0].tolist() == [200] * 3 and chip[-1, -1].tolist() == [0] * 3


def test_chip_matches_dlib_on_real_faces():
    faces = dlib_faces(8)
    for image, landmarks, want in faces:
        got = extract_dlib_chip(image, landmarks)
        assert np.abs(got.astype(int) - want).max() <= 1


def test_dlib_150_is_known_to_the_aligner():
    template = get_template("dlib-150")
    assert template is DLIB_150 and (template.height, template.width) == (150, 150)
    left_eye, right_eye, nose, left_mouth, right_mouth = template.points
    assert left_eye[0] < nose[0] < right_eye[0] and max(left_eye[1], right_eye[1]) < nose[1] < left_mouth[1]
