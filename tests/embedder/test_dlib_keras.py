"""The Keras port of dlib's ResNet: dlib's odd add, save/load and ONNX round trips, the full network vs dlib."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
sys.path.insert(0, str(Path(__file__).parent))

import keras  # noqa: E402
import onnxruntime as ort  # noqa: E402
from dlib_fixtures import dlib_faces, dlib_module, weights_file  # noqa: E402

from facesearch.embedder.core.errors import ModelSpecError  # noqa: E402
from facesearch.embedder.dlib.keras_net import DlibAdd, build_dlib_resnet  # noqa: E402
from facesearch.embedder.dlib.weights import read_dlib_resnet  # noqa: E402
from facesearch.embedder.export.exporter import convert_to_onnx, row_cosines  # noqa: E402


def _dlib_add_reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """dlib's add (cpu_dlib.cpp): the larger size in every dimension, missing entries count as 0."""
    shape = np.maximum(a.shape, b.shape)
    out = np.zeros(shape, np.float32)
    out[: a.shape[0], : a.shape[1], : a.shape[2], : a.shape[3]] += a
    out[: b.shape[0], : b.shape[1], : b.shape[2], : b.shape[3]] += b
    return out


def _tiny_model() -> keras.Model:
    """image 9x9x3 -> a stride-2 branch (3x3x8) added into an avg-pooled shortcut (4x4x3), as dlib's level 1."""
    image = keras.Input((9, 9, 3), name="image")
    branch = keras.layers.Conv2D(8, 3, strides=2, padding="valid")(image)
    branch = keras.layers.Conv2D(8, 3, padding="valid")(keras.layers.ZeroPadding2D(0)(branch))
    shortcut = keras.layers.AveragePooling2D(2, 2)(image)
    x = DlibAdd(name="add")([branch, shortcut])
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(image, keras.layers.Dense(4, name="embedding")(x))


def test_dlib_add_pads_channels_and_the_bottom_right():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2, 3, 3, 8)).astype(np.float32)   # branch: more channels, smaller map
    b = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)   # shortcut
    got = np.asarray(DlibAdd()([a, b]))
    assert got.shape == (2, 4, 4, 8)
    np.testing.assert_allclose(got, _dlib_add_reference(a, b), rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[:, 3, :, 3:], 0)  # neither input reaches there
    same = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(DlibAdd()([same, b])), same + b, atol=1e-6)


def test_dlib_add_survives_keras_save_load_and_onnx(tmp_path):
    keras.utils.set_random_seed(0)
    model = _tiny_model()
    x = np.random.default_rng(1).normal(size=(5, 9, 9, 3)).astype(np.float32)
    want = np.asarray(model(x))
    assert DlibAdd.from_config(model.get_layer("add").get_config()).name == "add"

    model.save(tmp_path / "tiny.keras")
    loaded = keras.saving.load_model(tmp_path / "tiny.keras")  # found by its registration alone
    assert isinstance(loaded.get_layer("add"), DlibAdd)
    np.testing.assert_allclose(np.asarray(loaded(x)), want, atol=1e-6)

    proto, _ = convert_to_onnx(loaded)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["embedding"], {"image": x})[0], want, atol=1e-5)


@pytest.fixture(scope="module")
def net():
    return read_dlib_resnet(weights_file())


@pytest.fixture(scope="module")
def model(net):
    return build_dlib_resnet(net)


def test_network_shape(model, net):
    assert model.input_shape == (None, 150, 150, 3) and model.output_shape == (None, 128)
    assert model.get_layer(index=0).name == "image" and model.layers[-1].name == "embedding"
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len(convs) == 29
    assert sum(isinstance(layer, DlibAdd) for layer in model.layers) == 14
    assert model.get_layer("level1_unit0_add").output.shape[1:] == (4, 4, 256)  # 3x3 branch into 4x4
    assert model.get_layer("level0_unit0_add").output.shape[1:] == (2, 2, 256)  # 1x1 branch into 2x2
    # The stem's kernel is dlib's, scaled by the following affine layer's gamma (folded in).
    kernel, bias, _, _ = net.layers[0].conv()
    gamma, beta = net.layers[1].affine()
    got_kernel, got_bias = model.get_layer("stem_conv").get_weights()
    np.testing.assert_allclose(got_kernel, kernel * gamma, rtol=1e-6)
    np.testing.assert_allclose(got_bias, bias * gamma + beta, rtol=1e-5, atol=1e-6)


def test_layers_out_of_dlib_order_are_refused(net):
    import dataclasses

    swapped = net.layers.copy()
    swapped[4], swapped[5] = swapped[5], swapped[4]  # an affine before its convolution
    with pytest.raises(ModelSpecError, match="expected 'con_4', found 'affine_'"):
        build_dlib_resnet(dataclasses.replace(net, layers=swapped))


def test_keras_model_matches_dlib_on_real_chips(model, net):
    dlib = dlib_module()
    faces = dlib_faces(6)
    chips = np.stack([chip for _, _, chip in faces])
    want = np.array(dlib.face_recognition_model_v1(str(weights_file())).compute_face_descriptor(list(chips)))
    got = np.asarray(model((chips - np.float32(net.mean_rgb)) / np.float32(256)))
    assert row_cosines(got, want).min() >= 0.9999
    np.testing.assert_allclose(got, want, atol=1e-5)  # raw descriptors too, not only their directions
