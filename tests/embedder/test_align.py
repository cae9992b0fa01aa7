"""5-point alignment: the least-squares similarity against hand-worked numbers, the templates, the warp."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from facesearch.embedder.align import (
    ARCFACE_112X112,
    SPHEREFACE_112X96,
    TEMPLATES,
    align_face,
    get_template,
    register_template,
    similarity_transform,
    warp_affine,
)
from facesearch.embedder.core.errors import ModelSpecError


def test_similarity_transform_matches_a_hand_worked_least_squares_case():
    # A unit square about the origin onto a square of side 2 whose last corner is 1 px too high.
    # Centred source, so t = mean(dst) = (1, 1.25); a = sum(x X + y Y) / sum(x^2 + y^2) = 9 / 8;
    # b = sum(x Y - y X) / sum(x^2 + y^2) = -1 / 8 (X, Y: centred dst). M = [[a, -b, tx], [b, a, ty]].
    src = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    dst = [(0, 0), (2, 0), (2, 2), (0, 3)]
    np.testing.assert_allclose(similarity_transform(src, dst), [[1.125, 0.125, 1.0], [-0.125, 1.125, 1.25]],
                               atol=1e-12)


def test_similarity_transform_recovers_an_exact_rotation_scale_and_shift():
    # 90 degrees, scale 2, shift (3, 4): (1, 0) -> (3, 6), (0, 1) -> (1, 4).
    m = similarity_transform([(0, 0), (1, 0), (0, 1)], [(3, 4), (3, 6), (1, 4)])
    np.testing.assert_allclose(m, [[0, -2, 3], [2, 0, 4]], atol=1e-12)


def _weighted_similarity_reference(src, dst, w):
    """Weighted least squares by the normal equations of  min sum_i w_i |M [x_i, y_i, 1] - dst_i|^2."""
    a_rows, targets, row_w = [], [], []
    for (x, y), (u, v), wi in zip(src, dst, w):
        a_rows += [[x, -y, 1, 0], [y, x, 0, 1]]
        targets += [u, v]
        row_w += [wi, wi]
    a, t, wd = np.array(a_rows, float), np.array(targets, float), np.diag(row_w)
    p, q, tx, ty = np.linalg.solve(a.T @ wd @ a, a.T @ wd @ t)
    return np.array([[p, -q, tx], [q, p, ty]])


def test_weighted_similarity_transform_matches_the_normal_equations_and_repeated_points():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    dst = src @ [[0.9, -0.3], [0.3, 0.9]] + [10, -4] + rng.normal(0, 3, (5, 2))
    w = np.array([1.0, 1.0, 0.5, 0.25, 0.25])
    weighted = similarity_transform(src, dst, w)
    np.testing.assert_allclose(weighted, _weighted_similarity_reference(src, dst, w), atol=1e-9)
    assert not np.allclose(weighted, similarity_transform(src, dst), atol=1e-3)  # the weights matter
    # Integer weights are repeated points; weight 0 drops a point; equal weights are no weights.
    np.testing.assert_allclose(similarity_transform(src, dst, [2, 1, 1, 1, 3]),
                               similarity_transform(src[[0, 0, 1, 2, 3, 4, 4, 4]], dst[[0, 0, 1, 2, 3, 4, 4, 4]]),
                               atol=1e-9)
    np.testing.assert_allclose(similarity_transform(src, dst, [1, 1, 1, 0, 0]), similarity_transform(src[:3], dst[:3]),
                               atol=1e-9)
    np.testing.assert_allclose(similarity_transform(src, dst, [0.5] * 5), similarity_transform(src, dst), atol=1e-9)


def test_weighted_similarity_transform_rejects_bad_weights():
    with pytest.raises(ValueError, match="weights"):
        similarity_transform(np.zeros((5, 2)), np.zeros((5, 2)), [1, 1, 1, -1, 1])
    with pytest.raises(ValueError, match="weights"):
        similarity_transform(np.zeros((5, 2)), np.zeros((5, 2)), [1, 1, 1])


def test_align_face_fits_with_the_template_weights():
    # Eyes and nose exactly on a shifted copy of the template, mouth corners 12 px off: with the
    # mouth weighted 0 the fit is the exact shift, so the crop is the photo moved back (to within
    # 1 grey level: float32 points make the shift 3 and 2 px only to ~1e-6).
    template = dataclasses.replace(ARCFACE_112X112, name="test-weighted", weights=np.float32([1, 1, 1, 0, 0]))
    photo = np.random.default_rng(1).integers(0, 256, (112, 112, 3), dtype=np.uint8)
    landmarks = template.points + [3.0, 2.0]
    landmarks[3:] += [0.0, 12.0]
    moved_back = photo[12:102, 13:103].astype(np.int16)
    crop = align_face(photo, landmarks, template)
    assert np.abs(crop[10:100, 10:100] - moved_back).max() <= 1
    unweighted = align_face(photo, landmarks, dataclasses.replace(template, weights=None))
    assert np.abs(unweighted[10:100, 10:100] - moved_back).mean() > 20  # noise photo: any misfit shows


def test_register_template_rejects_bad_weights():
    with pytest.raises(ValueError, match="weights"):
        register_template(dataclasses.replace(ARCFACE_112X112, name="bad", weights=np.float32([1, 1, 1, 1])))


def test_similarity_transform_rejects_mismatched_points():
    with pytest.raises(ValueError, match="point sets"):
        similarity_transform(np.zeros((5, 2)), np.zeros((4, 2)))


def test_templates_arcface_and_sphereface_geometry():
    assert (ARCFACE_112X112.height, ARCFACE_112X112.width) == (112, 112)
    assert (SPHEREFACE_112X96.height, SPHEREFACE_112X96.width) == (112, 96)
    np.testing.assert_allclose(ARCFACE_112X112.points[0], [38.2946, 51.6963])  # insightface arcface_dst
    np.testing.assert_allclose(SPHEREFACE_112X96.points, ARCFACE_112X112.points - [8, 0])
    assert get_template("sphereface-112x96") is SPHEREFACE_112X96
    assert set(TEMPLATES) >= {"arcface-112x112", "sphereface-112x96"}


def test_unknown_template_names_the_known_ones():
    with pytest.raises(ModelSpecError, match="arcface-112x112"):
        get_template("no-such-template")


def test_warp_uses_pixel_index_coordinates():
    image = np.zeros((50, 60, 3), np.uint8)
    image[20, 10] = 255  # x = 10, y = 20
    moved = warp_affine(image, np.array([[1.0, 0, 5], [0, 1, 3]]), 50, 60)
    assert [tuple(p) for p in np.argwhere(moved[..., 0] == 255)] == [(23, 15)]
    doubled = warp_affine(image, np.array([[2.0, 0, 0], [0, 2, 0]]), 100, 120)
    assert doubled[40, 20, 0] == 255 and doubled[40, 19, 0] == doubled[40, 21, 0] == 127


@pytest.mark.parametrize("template", [ARCFACE_112X112, SPHEREFACE_112X96], ids=lambda t: t.name)
def test_align_face_puts_the_landmarks_on_the_template(template):
    # A photo with 5 bright dots where a rotated (25 deg), scaled (x2.3), shifted face would have them.
    theta = np.deg2rad(25)
    rot = 2.3 * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    landmarks = template.points @ rot.T + [140, 60]
    photo = np.zeros((420, 400, 3), np.uint8)
    for x, y in np.rint(landmarks).astype(int):
        photo[y - 2:y + 3, x - 2:x + 3] = 255
    crop = align_face(photo, np.rint(landmarks), template)
    assert crop.shape == (template.height, template.width, 3) and crop.dtype == np.uint8
    for x, y in template.points:
        window = crop[int(y) - 2:int(y) + 4, int(x) - 2:int(x) + 4, 0]
        assert window.max() > 200, (x, y)
    assert crop[5, 5, 0] == 0  # far from every dot
