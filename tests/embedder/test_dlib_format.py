"""The dlib weight-file reader: primitive encodings, the whole file's structure, known weights."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from dlib_fixtures import weights_file  # noqa: E402

from facesearch.embedder.core.errors import ModelSpecError  # noqa: E402
from facesearch.embedder.core.model_card import sha256_file  # noqa: E402
from facesearch.embedder.dlib.weights import NUM_LAYERS, NUM_PARAMETERS, WEIGHTS_SHA256, _Reader, read_dlib_resnet  # noqa: E402


@pytest.fixture(scope="module")
def net():
    return read_dlib_resnet(weights_file())


@pytest.mark.parametrize("data, value", [(b"\x01\x00", 0), (b"\x01\x02", 2), (b"\x81\x1c", -28),
                                         (b"\x02\x80\x12", 4736), (b"\x03\x0a\xd7\xa3", 0xA3D70A)])
def test_integer_encoding(data, value):
    assert _Reader(data, "x").int() == value


def test_float_is_mantissa_times_two_to_the_exponent():
    # The loss layer's margin in the real file: 0xa3d70a * 2^-28.
    assert _Reader(b"\x03\x0a\xd7\xa3\x81\x1c", "x").float() == pytest.approx(0.04, abs=1e-9)


def test_bad_control_byte_is_a_clear_error():
    with pytest.raises(ModelSpecError, match="bad integer control byte"):
        _Reader(b"\x0f", "x").int()


def test_file_checksum_is_the_recorded_one():
    assert sha256_file(weights_file()) == WEIGHTS_SHA256


def test_structure(net):
    assert len(net.layer_versions) == NUM_LAYERS == 130
    assert net.num_parameters == NUM_PARAMETERS == 5_614_592
    kinds = [layer.kind for layer in net.layers]
    assert {k: kinds.count(k) for k in set(kinds)} == {
        "con_4": 29, "affine_": 29, "relu_": 29, "add_prev_": 14, "avg_pool_2": 5, "max_pool_2": 1, "fc_2": 1}
    assert net.input_size == (150, 150)
    np.testing.assert_allclose(net.mean_rgb, (122.782, 117.001, 104.298), atol=1e-4)
    assert net.loss[0] == "loss_metric_2" and net.loss[1:] == pytest.approx((0.04, 0.6))


def test_shapes_and_known_weights(net):
    convs = [layer for layer in net.layers if layer.kind == "con_4"]
    kernel, bias, stride, pad = convs[0].conv()
    assert kernel.shape == (7, 7, 3, 32) and bias.shape == (32,) and (stride, pad) == (2, 0)
    # OIHW in the file -> HWIO: the first three floats are filter 0, channel R, row 0, columns 0-2.
    np.testing.assert_array_equal(kernel[0, :3, 0, 0], np.float32([-0.02932992, -0.018865306, -0.00566939]))
    assert [c.ints[:6:5] + c.ints[3:4] for c in convs[1:4]] == [(32, 1, 1)] * 3  # (filters, pad, stride)
    downs = [c.conv() for c in convs if c.ints[3] == 2][1:]
    assert [(k.shape, p) for k, _, _, p in downs] == [
        ((3, 3, 32, 64), 0), ((3, 3, 64, 128), 0), ((3, 3, 128, 256), 0), ((3, 3, 256, 256), 0)]
    gamma, beta = net.layers[1].affine()
    assert gamma.shape == beta.shape == (32,)
    np.testing.assert_array_equal(gamma[:3], np.float32([12.166323, 10.559221, 17.43005]))
    fc = net.layers[-1]
    assert fc.ints == (128, 256, 1) and fc.params.size == 256 * 128
    np.testing.assert_array_equal(fc.params[:3], np.float32([-0.0067462474, -0.010189231, 0.0052482453]))
    assert net.layers[-2].ints[0] == 0  # the global average pool


def test_truncated_and_padded_files_are_refused(tmp_path):
    data = weights_file().read_bytes()
    (tmp_path / "short.dat").write_bytes(data[:-100])
    with pytest.raises(ModelSpecError, match="ends early"):
        read_dlib_resnet(tmp_path / "short.dat")
    (tmp_path / "long.dat").write_bytes(data + b"\x00")
    with pytest.raises(ModelSpecError, match="1 trailing bytes"):
        read_dlib_resnet(tmp_path / "long.dat")
    with pytest.raises(ModelSpecError, match="cannot read"):
        read_dlib_resnet(tmp_path / "missing.dat")
