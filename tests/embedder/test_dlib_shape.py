"""dlib's 5-point shape predictor in numpy: the file reader, and landmarks equal to dlib.shape_predictor."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from dlib_fixtures import dlib_module, lfw_photos, weights_file  # noqa: E402

from facesearch.embedder.core.errors import ModelSpecError  # noqa: E402
from facesearch.embedder.core.model_card import sha256_file  # noqa: E402
from facesearch.embedder.dlib.shape_predictor import (  # noqa: E402
    SHAPE_FILE,
    SHAPE_SHA256,
    _int_stream,
    intensity,
    parse_shape_predictor,
    read_shape_predictor,
)
from facesearch.embedder.dlib.weights import _Reader  # noqa: E402


def _encode_int(value: int) -> bytes:
    """dlib's integer encoding (../shared/notes/dlib-resnet.md)."""
    magnitude = abs(value)
    body = magnitude.to_bytes(max(1, (magnitude.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if value < 0 else 0)]) + body


def _encode_float(value: float) -> bytes:
    mantissa, exponent = np.frexp(np.float32(value))
    return _encode_int(int(mantissa * 2 ** 24)) + _encode_int(int(exponent) - 24)


def _encode_predictor(initial, splits, leaves, anchors, deltas) -> bytes:
    """serialize(shape_predictor) of dlib/image_processing/shape_predictor.h.

    splits: (cascades, trees, S, 3) (idx1, idx2, thresh); leaves: (cascades, trees, S + 1, 2p).
    """
    def column(values):
        return _encode_int(-len(values)) + _encode_int(-1) + b"".join(_encode_float(v) for v in values)

    out = _encode_int(1) + column(initial) + _encode_int(len(splits))
    for forest_splits, forest_leaves in zip(splits, leaves):
        out += _encode_int(len(forest_splits))
        for tree_splits, tree_leaves in zip(forest_splits, forest_leaves):
            out += _encode_int(len(tree_splits))
            out += b"".join(_encode_int(int(a)) + _encode_int(int(b)) + _encode_float(t) for a, b, t in tree_splits)
            out += _encode_int(len(tree_leaves)) + b"".join(column(leaf) for leaf in tree_leaves)
    out += _encode_int(len(anchors)) + b"".join(
        _encode_int(len(a)) + b"".join(_encode_int(int(i)) for i in a) for a in anchors)
    out += _encode_int(len(deltas)) + b"".join(
        _encode_int(len(d)) + b"".join(_encode_float(x) + _encode_float(y) for x, y in d) for d in deltas)
    return out


def _tiny_predictor(rng: np.random.Generator, cascades=2, trees=3, depth=2, parts=3, features=6):
    splits = np.concatenate([rng.integers(0, features, (cascades, trees, 2 ** depth - 1, 2)),
                             rng.normal(0, 20, (cascades, trees, 2 ** depth - 1, 1))], axis=3)
    leaves = rng.normal(0, 0.01, (cascades, trees, 2 ** depth, 2 * parts))
    initial = rng.uniform(0.2, 0.8, 2 * parts)
    anchors = rng.integers(0, parts, (cascades, features))
    deltas = rng.normal(0, 0.1, (cascades, features, 2))
    return (initial, splits, leaves, anchors, deltas), _encode_predictor(initial, splits, leaves, anchors, deltas)


@pytest.fixture(scope="module")
def predictor():
    return read_shape_predictor(weights_file().parent / SHAPE_FILE)


@pytest.fixture(scope="module")
def reference():
    dlib = dlib_module()
    return dlib, dlib.shape_predictor(str(weights_file().parent / SHAPE_FILE))


def test_integer_stream_matches_the_scalar_reader():
    rng = np.random.default_rng(0)
    values = [0, 1, -1, 255, -256, 2 ** 40 + 3, -(2 ** 62)] + rng.integers(-2 ** 31, 2 ** 31, 3000).tolist()
    data = b"".join(_encode_int(v) for v in values)
    reader = _Reader(data, "x")
    assert [reader.int() for _ in values] == values
    np.testing.assert_array_equal(_int_stream(data, "x"), values)


def test_integer_starts_shortcut_equals_the_walk(monkeypatch):
    import facesearch.embedder.dlib.shape_predictor as dlib_shape

    rng = np.random.default_rng(3)
    values = rng.integers(-2 ** 50, 2 ** 50, 20000) >> rng.integers(0, 50, 20000)  # 1 to 7 bytes each
    data = b"".join(_encode_int(int(v)) for v in values)
    walked = dlib_shape._walk_starts(data)
    calls = []
    monkeypatch.setattr(dlib_shape, "_walk_starts", lambda d: calls.append(1) or walked)
    fast = _int_stream(data, "x")
    assert not calls  # the shortcut found the chain by itself
    np.testing.assert_array_equal(fast, values)
    assert walked.size == values.size


def test_integer_stream_refuses_a_truncated_file():
    data = b"".join(_encode_int(v) for v in range(-50, 5000, 7))
    with pytest.raises(ModelSpecError, match="not a sequence of dlib integers"):
        _int_stream(data[:-1], "x")


def test_tiny_predictor_round_trips():
    (initial, splits, leaves, anchors, deltas), data = _tiny_predictor(np.random.default_rng(1))
    sp = parse_shape_predictor(data)
    assert (sp.num_parts, sp.tree_depth, sp.idx1.shape) == (3, 2, (2, 3, 3))
    np.testing.assert_array_equal(sp.initial_shape, initial.astype(np.float32))
    np.testing.assert_array_equal(sp.idx1, splits[..., 0])
    np.testing.assert_array_equal(sp.idx2, splits[..., 1])
    np.testing.assert_array_equal(sp.thresh, splits[..., 2].astype(np.float32))
    np.testing.assert_array_equal(sp.leaf_values, leaves.astype(np.float32))
    np.testing.assert_array_equal(sp.anchor_idx, anchors)
    np.testing.assert_array_equal(sp.deltas, deltas.astype(np.float32))


def test_malformed_predictors_are_refused():
    (initial, splits, leaves, anchors, deltas), data = _tiny_predictor(np.random.default_rng(2))
    with pytest.raises(ModelSpecError, match="left over"):
        parse_shape_predictor(data + _encode_int(0))
    with pytest.raises(ModelSpecError, match="version 2"):
        parse_shape_predictor(_encode_int(2) + data[2:])
    with pytest.raises(ModelSpecError, match="out of range"):
        parse_shape_predictor(_encode_predictor(initial, splits, leaves, anchors + 3, deltas))


def test_real_file_structure(predictor):
    assert sha256_file(weights_file().parent / SHAPE_FILE) == SHAPE_SHA256
    # 15 cascades of 500 trees of depth 4 (15 splits, 16 leaves), 800 feature pixels per cascade, 5 points
    assert predictor.idx1.shape == (15, 500, 15) and predictor.leaf_values.shape == (15, 500, 16, 10)
    assert (predictor.tree_depth, predictor.num_parts) == (4, 5)
    assert predictor.anchor_idx.shape == (15, 800) and predictor.deltas.shape == (15, 800, 2)
    np.testing.assert_allclose(predictor.initial_shape, [0.77625, 0.34554, 0.61862, 0.35378, 0.22653,
                                                         0.34553, 0.38415, 0.35377, 0.50138, 0.65761], atol=1e-5)


def test_changed_file_is_refused(tmp_path):
    damaged = tmp_path / SHAPE_FILE
    data = (weights_file().parent / SHAPE_FILE).read_bytes()
    damaged.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit of the last delta
    with pytest.raises(ModelSpecError, match="sha256"):
        read_shape_predictor(damaged)


def test_intensity_is_dlibs_grey():
    rgb = np.array([[[255, 255, 254], [1, 1, 2], [0, 0, 0]]], np.uint8)
    np.testing.assert_array_equal(intensity(rgb), [[254, 1, 0]])
    with pytest.raises(ValueError, match="uint8"):
        intensity(rgb.astype(np.float32))


@pytest.mark.parametrize("channels", [1, 3])
def test_landmarks_equal_dlib_on_synthetic_images(predictor, reference, channels):
    dlib, ref = reference
    rng = np.random.default_rng(channels)
    for _ in range(40):
        h, w = rng.integers(30, 260, 2)
        shape = (h, w) if channels == 1 else (h, w, 3)
        # smooth blobs as well as noise, so that the trees take every kind of branch
        image = (rng.integers(0, 256, shape, dtype=np.uint8) // rng.integers(1, 4)).astype(np.uint8)
        left, top = (int(v) for v in rng.integers(-40, [w, h]))
        right, bottom = left + int(rng.integers(4, 220)), top + int(rng.integers(4, 220))
        want = [[p.x, p.y] for p in ref(image, dlib.rectangle(left, top, right, bottom)).parts()]
        np.testing.assert_array_equal(predictor.predict(image, (left, top, right, bottom)), want)


def test_landmarks_equal_dlib_on_lfw(predictor, reference):
    dlib, ref = reference
    detect = dlib.get_frontal_face_detector()
    checked = 0
    for path in lfw_photos(25, step=331):
        image = dlib.load_rgb_image(str(path))
        for box in detect(image, 0):  # not upsampled: 4x faster, and LFW's faces are large
            rect = (box.left(), box.top(), box.right(), box.bottom())
            for shift in (0, 7):  # dlib's own box, and one off it
                moved = dlib.rectangle(rect[0] + shift, rect[1] - shift, rect[2] + shift, rect[3])
                want = [[p.x, p.y] for p in ref(image, moved).parts()]
                got = predictor.predict(image, (moved.left(), moved.top(), moved.right(), moved.bottom()))
                np.testing.assert_array_equal(got, want, err_msg=str(path))
                checked += 1
    assert checked >= 30


def test_deep_trees_descend_level_by_level():
    # Trees of more than 16 splits are too deep for the leaf table: the level-by-level descent must
    # agree with it wherever both apply (here: the real file's trees, with the table removed).
    (_, _, _, _, _), data = _tiny_predictor(np.random.default_rng(4), depth=5, features=40)
    assert parse_shape_predictor(data)._leaf_table is None
    predictor = read_shape_predictor(weights_file().parent / SHAPE_FILE)
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (120, 100, 3), dtype=np.uint8) for _ in range(5)]
    want = [predictor.predict(image, (10, 20, 90, 100)) for image in images]
    object.__setattr__(predictor, "_leaf_table", None)
    for image, points in zip(images, want):
        np.testing.assert_array_equal(predictor.predict(image, (10, 20, 90, 100)), points)
