"""Embedder over ONNX Runtime, checked against the same linear model computed in numpy."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from facesearch.embedder.core.errors import ModelSpecError
from facesearch.embedder.core.model_card import ModelCard, sha256_file
from facesearch.embedder.runtime import Embedder

H, W, D = 8, 6, 5


def _write_linear_model(folder, weights, channel_order="RGB", size=(H, W), template="none"):
    """A model that flattens the normalised image and multiplies by `weights` ((h*w*3, D))."""
    h, w = size
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["embedding"]),
        ],
        "linear",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", h, w, 3])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", D])],
        [numpy_helper.from_array(np.array([-1, h * w * 3], np.int64), "flat_shape"),
         numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    card = ModelCard(name="linear-test", input_height=h, input_width=w, embedding_size=D,
                     alignment_template=template, channel_order=channel_order,
                     onnx_sha256=sha256_file(folder / "model.onnx"))
    card.save(folder)
    return card


@pytest.fixture(scope="module")
def weights():
    return np.random.default_rng(1).standard_normal((H * W * 3, D)).astype(np.float32)


@pytest.fixture(scope="module")
def crops():
    rng = np.random.default_rng(2)
    return [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(11)]


def _reference(crops, weights, bgr=False):
    x = np.stack(crops).astype(np.float32)
    if bgr:
        x = x[..., ::-1]
    y = ((x - 127.5) / 128.0).reshape(len(crops), -1) @ weights
    return y / np.linalg.norm(y, axis=1, keepdims=True)


@pytest.mark.parametrize(("template", "size", "aligned", "method"), [
    ("none", (H, W), None, "whole-photo-resize"),
    ("sphereface-112x96", (112, 96), None, "mtcnn-5-point/sphereface-112x96"),
    ("sphereface-112x96", (112, 96), True, "whole-photo-resize"),
    ("dlib-150", (150, 150), None, "dlib-5-point-chip/dlib-150"),
])
def test_crop_method_names_how_photos_become_crops(tmp_path, template, size, aligned, method):
    weights = np.zeros((size[0] * size[1] * 3, D), np.float32)
    _write_linear_model(tmp_path / "m", weights, size=size, template=template)
    assert Embedder(tmp_path / "m", aligned=aligned).crop_method == method


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_embed_matches_numpy_and_keeps_order(tmp_path, weights, crops, batch_size):
    _write_linear_model(tmp_path / "m", weights)
    emb = Embedder(tmp_path / "m").embed(crops, batch_size=batch_size)
    assert emb.shape == (len(crops), D) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, _reference(crops, weights), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_bgr_models_get_channels_reversed(tmp_path, weights, crops):
    _write_linear_model(tmp_path / "m", weights, channel_order="BGR")
    emb = Embedder(tmp_path / "m").embed(crops)
    np.testing.assert_allclose(emb, _reference(crops, weights, bgr=True), rtol=1e-4, atol=1e-5)


def test_empty_input_gives_empty_matrix(tmp_path, weights):
    _write_linear_model(tmp_path / "m", weights)
    assert Embedder(tmp_path / "m").embed([]).shape == (0, D)


def test_faces_resizes_a_photo_to_the_model_input(tmp_path, weights):
    _write_linear_model(tmp_path / "m", weights)
    Image.fromarray(np.full((50, 40, 3), 7, np.uint8)).save(tmp_path / "face.png")
    (face,) = Embedder(tmp_path / "m").faces(tmp_path / "face.png")
    assert face.image.shape == (H, W, 3) and face.box is None
    assert (face.image == 7).all()


def test_wrong_crop_shape_is_refused(tmp_path, weights):
    _write_linear_model(tmp_path / "m", weights)
    with pytest.raises(ValueError, match="expected uint8"):
        Embedder(tmp_path / "m").embed([np.zeros((H + 1, W, 3), np.uint8)])


def test_changed_onnx_file_is_refused(tmp_path, weights):
    _write_linear_model(tmp_path / "m", weights)
    with open(tmp_path / "m" / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelSpecError, match="sha256"):
        Embedder(tmp_path / "m")


def test_missing_model_folder_and_card(tmp_path):
    with pytest.raises(ModelSpecError, match="does not exist"):
        Embedder(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSpecError, match="no model card"):
        Embedder(tmp_path / "empty")


def test_card_of_another_version_is_refused(tmp_path, weights):
    card = _write_linear_model(tmp_path / "m", weights)
    data = card.to_dict() | {"card_version": 99}
    with pytest.raises(ModelSpecError, match="version 99 is not supported"):
        ModelCard.from_dict(data)


def test_card_round_trip_and_default_threshold(tmp_path, weights):
    card = _write_linear_model(tmp_path / "m", weights)
    assert ModelCard.load(tmp_path / "m") == card
    assert card.default_threshold == 0.3
    calibrated = ModelCard.from_dict(card.to_dict() | {"thresholds": {"best_accuracy": 0.41, "far_1e-3": 0.52}})
    assert calibrated.default_threshold == 0.52
