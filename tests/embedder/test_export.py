"""Export: PReLU fusion, SavedModel + ONNX files, model card, parity with Keras, safe replacement."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf2onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from embedder.core.errors import ExportParityError, ModelSpecError  # noqa: E402
from embedder.core.model_card import CARD_FILE, ModelCard, sha256_file  # noqa: E402
from embedder.export import exporter  # noqa: E402
from embedder.export.exporter import ExportReport, export_model, parity_inputs, row_cosines  # noqa: E402
from embedder.export.onnx_prelu import fuse_prelu  # noqa: E402
from train.config import TrainConfig, get_preset  # noqa: E402
from train.models import build_views, embedding_view, load_embedding_model  # noqa: E402

H, W, DIM, CLASSES = 112, 96, 8, 5
N_PRELU = 4


def _tiny_training_model(seed: int = 0, height: int = H, width: int = W) -> keras.Model:
    """image -> conv/BN/PReLU blocks (one residual) -> `embedding` (8-d) -> a 5-class head."""
    keras.utils.set_random_seed(seed)
    L = keras.layers
    image = keras.Input((height, width, 3), name="image")
    x = L.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(image)
    x = L.BatchNormalization()(x)
    x = L.PReLU(shared_axes=[1, 2])(x)
    y = L.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    y = L.BatchNormalization()(y)
    y = L.PReLU(shared_axes=[1, 2])(y)
    x = L.Add()([x, y])                      # a residual Add that is no PReLU
    x = L.Conv2D(8, 3, strides=2, padding="same")(x)
    x = L.PReLU()(x)                         # unshared slope (h, w, c): tests the slope layout
    x = L.GlobalAveragePooling2D()(x)
    x = L.Dense(16)(x)
    x = L.PReLU()(x)                         # PReLU on a 2-d tensor
    x = L.Dense(DIM, use_bias=False)(x)
    embedding = L.BatchNormalization(name="embedding")(x)
    head = L.Dense(CLASSES, name="head")(embedding)
    return _trained_looking(keras.Model(image, head, name="tiny_train"), seed)


def _trained_looking(model: keras.Model, seed: int = 0) -> keras.Model:
    """Give PReLU slopes of both signs (alpha = 0 or 0.25 everywhere would hide a sign or
    channel mix-up) and BatchNorm statistics that are not the identity."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.PReLU):
            (alpha,) = layer.get_weights()
            layer.set_weights([(rng.uniform(0.1, 0.6, alpha.shape) * rng.choice([-1, 1], alpha.shape)).astype("f4")])
        elif isinstance(layer, keras.layers.BatchNormalization):
            shapes = [w.shape for w in layer.get_weights()]  # gamma, beta, moving mean, moving variance
            ranges = [(0.5, 1.5), (-0.2, 0.2), (-0.1, 0.1), (0.5, 1.5)]
            layer.set_weights([rng.uniform(lo, hi, shape).astype("f4") for shape, (lo, hi) in zip(shapes, ranges)])
    return model


def _count_prelus(model: keras.Model) -> int:
    return sum(isinstance(layer, keras.layers.PReLU) for layer in model.layers)


def export_checkpoint(checkpoint, out, **options):
    """What `facesearch export` does: load the run's embedding view, export it with the run's template."""
    model, config = load_embedding_model(checkpoint)
    return export_model(model, out, alignment_template=config.alignment_template if config is not None else None,
                        source=str(checkpoint.resolve()), **options)


def recomputed_parity(out, keras_model, n: int = 64, seed: int = 0) -> dict[str, float]:
    """Minimum cosine of each written format against Keras, measured here from the files on disk."""
    _, height, width, _ = keras_model.input_shape
    x = parity_inputs(n, height, width, seed=seed)
    want = keras_model(x, training=False).numpy()
    found = {}
    if (out / "model.onnx").is_file():
        found["onnx"] = float(row_cosines(_ort(out / "model.onnx").run(["embedding"], {"image": x})[0], want).min())
    if (out / "savedmodel").is_dir():
        serve = tf.saved_model.load(str(out / "savedmodel")).signatures["serving_default"]
        found["savedmodel"] = float(row_cosines(serve(image=tf.constant(x))["embedding"].numpy(), want).min())
    return found


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training run folder: model.keras + config.json (the template comes from the config)."""
    folder = tmp_path_factory.mktemp("run")
    _tiny_training_model().save(folder / "model.keras")
    TrainConfig(name="tiny-test", input_height=H, input_width=W, embedding_size=DIM).save(folder)
    return folder


@pytest.fixture(scope="module")
def keras_embedder(run_dir):
    return embedding_view(keras.saving.load_model(run_dir / "model.keras", compile=False))


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "mfn"
    card = export_checkpoint(run_dir, out)
    return card, out


def _ort(path_or_proto):
    data = path_or_proto.SerializeToString() if isinstance(path_or_proto, onnx.ModelProto) else str(path_or_proto)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _tree_digest(folder):
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}


# --- PReLU fusion ---------------------------------------------------------------------------


def test_fused_graph_has_one_prelu_per_layer_and_same_outputs(keras_embedder):
    signature = [tf.TensorSpec((None, H, W, 3), tf.float32, name="image")]
    unfused, _ = tf2onnx.convert.from_keras(keras_embedder, input_signature=signature, opset=17)
    assert sum(n.op_type == "Neg" for n in unfused.graph.node) == N_PRELU  # the pattern is really there

    fused, count = fuse_prelu(unfused)

    ops = [n.op_type for n in fused.graph.node]
    assert count == N_PRELU and ops.count("PRelu") == N_PRELU
    assert "Neg" not in ops and "Relu" not in ops  # the tiny model has no plain ReLU
    before = [n.op_type for n in unfused.graph.node]
    for op in ("Mul", "Add"):
        assert ops.count(op) == before.count(op) - N_PRELU
    # The unshared PReLU was multiplied in NHWC between two Transposes; they go too.
    assert ops.count("Transpose") == before.count("Transpose") - 2
    used = {i for n in fused.graph.node for i in n.input}
    assert {init.name for init in fused.graph.initializer} <= used, "dead initializers left behind"
    x = parity_inputs(9, H, W, seed=1)
    out_unfused = _ort(unfused).run(None, {"image": x})[0]
    out_fused = _ort(fused).run(None, {"image": x})[0]
    np.testing.assert_allclose(out_fused, out_unfused, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_fused, keras_embedder(x, training=False).numpy(), rtol=1e-4, atol=1e-5)


def _prelu_pattern_graph(x_is_output: bool) -> onnx.ModelProto:
    """x (2, 3, 4, 4) -> Relu/Neg/Relu/Mul/Add with the constant as Neg(alpha), unfolded."""
    alpha = numpy_helper.from_array(np.array([0.25, -0.5, 2.0], np.float32).reshape(3, 1, 1), "alpha")
    nodes = [
        helper.make_node("Identity", ["inp"], ["x"]),
        helper.make_node("Neg", ["alpha"], ["neg_alpha"]),
        helper.make_node("Relu", ["x"], ["pos"]),
        helper.make_node("Neg", ["x"], ["negx"]),
        helper.make_node("Relu", ["negx"], ["rneg"]),
        helper.make_node("Mul", ["neg_alpha", "rneg"], ["scaled"]),
        helper.make_node("Add", ["scaled", "pos"], ["y"], name="layer/add"),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 4, 4])]
    if x_is_output:
        outputs.append(helper.make_tensor_value_info("pos", TensorProto.FLOAT, [2, 3, 4, 4]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("inp", TensorProto.FLOAT, [2, 3, 4, 4])],
                              outputs, initializer=[alpha])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fusion_reads_unfolded_constants_and_matches_numpy_prelu():
    model = _prelu_pattern_graph(x_is_output=False)
    fused, count = fuse_prelu(model)
    assert count == 1
    assert [n.op_type for n in fused.graph.node] == ["Identity", "PRelu"]
    assert [i.name for i in fused.graph.initializer] == ["layer/PRelu/slope"]
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 4)).astype(np.float32)
    alpha = np.array([0.25, -0.5, 2.0], np.float32).reshape(3, 1, 1)
    np.testing.assert_allclose(_ort(fused).run(None, {"inp": x})[0], np.where(x > 0, x, alpha * x), rtol=1e-6)


def test_fusion_leaves_a_pattern_whose_parts_are_used_elsewhere():
    model = _prelu_pattern_graph(x_is_output=True)
    fused, count = fuse_prelu(model)
    assert count == 0
    assert [n.op_type for n in fused.graph.node] == [n.op_type for n in model.graph.node]


def test_conversion_does_not_depend_on_tf2onnx_name_counter(keras_embedder, monkeypatch):
    # tf2onnx numbers the names it invents with a process-wide counter; the export must not
    # depend on it, or a re-export of the same weights (in another process) would get another
    # sha256 and an index built with it would refuse the new file.
    converted = []
    for start in (1, 60, 9_960):  # counters that change width mid-conversion reorder name-sorted lists
        monkeypatch.setattr(tf2onnx.utils, "INTERNAL_NAME", start)
        converted.append(exporter.convert_to_onnx(keras_embedder)[0].SerializeToString())
    assert converted[0] == converted[1] == converted[2]


@pytest.mark.slow
def test_conversion_is_the_same_in_a_fresh_process(run_dir, keras_embedder):
    script = (
        "import hashlib, sys\n"
        "from embedder.export.exporter import convert_to_onnx, load_embedding_model\n"
        "model, _ = load_embedding_model(sys.argv[1])\n"
        "print(hashlib.sha256(convert_to_onnx(model)[0].SerializeToString()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run([sys.executable, "-c", script, str(run_dir)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    here = hashlib.sha256(exporter.convert_to_onnx(keras_embedder)[0].SerializeToString()).hexdigest()
    assert done.stdout.split()[-1] == here


# --- export_model ---------------------------------------------------------------------------


def test_export_writes_onnx_savedmodel_card_and_report(exported, run_dir, keras_embedder):
    card, out = exported
    assert sorted(p.name for p in out.iterdir()) == sorted([CARD_FILE, "export_report.json", "model.onnx", "savedmodel"])
    assert ModelCard.load(out) == card
    assert card.onnx_sha256 == sha256_file(out / "model.onnx")
    assert (card.input_height, card.input_width, card.embedding_size) == (H, W, DIM)
    assert card.alignment_template == "sphereface-112x96"
    assert re.fullmatch(r"mfn-112x96-[0-9a-f]{8}", card.name)
    assert (card.mean, card.std, card.channel_order) == ((127.5,) * 3, (128.0,) * 3, "RGB")
    assert (card.input_name, card.output_name, card.opset) == ("image", "embedding", 17)
    assert card.source_checkpoint == str(run_dir.resolve())
    report = ExportReport.load(out)
    assert report.name == card.name and report.parity_samples == 64 and report.prelu_fused == 0  # five-op default
    # The parity the export claims, measured again here from the written files on its own inputs.
    measured = recomputed_parity(out, keras_embedder)
    assert measured["onnx"] >= 0.99999 and measured["savedmodel"] >= 0.99999
    assert report.onnx_min_cosine == pytest.approx(measured["onnx"], abs=1e-7)
    assert report.savedmodel_min_cosine == pytest.approx(measured["savedmodel"], abs=1e-7)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "temporary folders left behind"


@pytest.mark.parametrize("batch", [1, 7])
def test_onnx_has_a_dynamic_batch_and_matches_keras(exported, keras_embedder, batch):
    _, out = exported
    model = onnx.load(out / "model.onnx")
    assert [n.op_type for n in model.graph.node].count("Neg") == N_PRELU  # five-op PReLUs by default
    for value in (*model.graph.input, *model.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    x = parity_inputs(batch, H, W, seed=batch)
    got = _ort(out / "model.onnx").run(["embedding"], {"image": x})[0]
    want = keras_embedder(x, training=False).numpy()
    assert got.shape == (batch, DIM)  # truncated at `embedding`, not the 5-class head
    assert row_cosines(got, want).min() >= 0.99999
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 7])
def test_savedmodel_signature_maps_image_to_embedding(exported, keras_embedder, batch):
    _, out = exported
    serve = tf.saved_model.load(str(out / "savedmodel")).signatures["serving_default"]
    (spec,) = serve.structured_input_signature[1].values()
    assert spec.name == "image" and spec.shape.as_list() == [None, H, W, 3]
    x = parity_inputs(batch, H, W, seed=batch)
    got = serve(image=tf.constant(x))["embedding"].numpy()
    np.testing.assert_allclose(got, keras_embedder(x, training=False).numpy(), rtol=1e-5, atol=1e-6)


def test_export_keeps_the_five_op_prelus_unless_asked_to_fuse(keras_embedder, tmp_path):
    export_model(keras_embedder, tmp_path / "out", savedmodel=False)
    report = ExportReport.load(tmp_path / "out")
    ops = [n.op_type for n in onnx.load(tmp_path / "out" / "model.onnx").graph.node]
    assert report.prelu_fused == 0 and ops.count("Neg") == N_PRELU and "PRelu" not in ops
    assert recomputed_parity(tmp_path / "out", keras_embedder, seed=5)["onnx"] >= 0.99999

    export_model(keras_embedder, tmp_path / "fused", savedmodel=False, fuse_prelu=True)
    report = ExportReport.load(tmp_path / "fused")
    ops = [n.op_type for n in onnx.load(tmp_path / "fused" / "model.onnx").graph.node]
    assert report.prelu_fused == N_PRELU and ops.count("PRelu") == N_PRELU and "Neg" not in ops
    assert recomputed_parity(tmp_path / "fused", keras_embedder, seed=5)["onnx"] >= 0.99999


def _corrupt_onnx(monkeypatch):
    real = exporter.convert_to_onnx

    def broken(model, **kw):
        proto, fused = real(model, **kw)
        biggest = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
        w = numpy_helper.to_array(biggest)
        biggest.CopyFrom(numpy_helper.from_array(w + np.random.default_rng(0).normal(0, 0.5, w.shape).astype(w.dtype),
                                                 biggest.name))
        return proto, fused

    monkeypatch.setattr(exporter, "convert_to_onnx", broken)


def _corrupt_savedmodel(monkeypatch):
    real = exporter._savedmodel_embed
    monkeypatch.setattr(exporter, "_savedmodel_embed", lambda path, x: real(path, x)[:, ::-1].copy())


@pytest.mark.parametrize("corrupt, fmt", [(_corrupt_onnx, "ONNX"), (_corrupt_savedmodel, "SavedModel")])
def test_broken_export_raises_and_leaves_the_previous_export(exported, keras_embedder, tmp_path, monkeypatch, corrupt,
                                                           fmt):
    previous = tmp_path / "mfn"
    shutil.copytree(exported[1], previous)
    before = _tree_digest(previous)
    corrupt(monkeypatch)

    for out in (previous, tmp_path / "fresh"):
        with pytest.raises(ExportParityError, match=fmt) as info:
            export_model(keras_embedder, out)
        cosine = float(re.search(r"min cosine (-?\d+\.\d+)", str(info.value)).group(1))
        assert cosine < 0.99999

    assert _tree_digest(previous) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mfn"], "a half-written export or temp folder was left"


def test_refuses_to_replace_a_folder_that_is_not_an_export(keras_embedder, tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "keep.jpg").write_bytes(b"not mine")
    with pytest.raises(ModelSpecError, match="not a model export"):
        export_model(keras_embedder, out)
    assert (out / "keep.jpg").read_bytes() == b"not mine"


def test_checkpoint_without_embedding_layer_is_refused(tmp_path):
    image = keras.Input((H, W, 3), name="image")
    keras.Model(image, keras.layers.Dense(3, name="features")(image)).save(tmp_path / "m.keras")
    with pytest.raises(ModelSpecError, match="'embedding'"):
        export_checkpoint(tmp_path / "m.keras", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_config_that_disagrees_with_the_model_is_refused(tmp_path):
    _tiny_training_model().save(tmp_path / "model.keras")
    TrainConfig(input_height=112, input_width=112).save(tmp_path)
    with pytest.raises(ModelSpecError, match="says 112x112 but the model .* takes 112x96"):
        export_checkpoint(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tiny_mobilefacenet_training_model_exports_with_parity(tmp_path):
    """The real backbone + ArcFace head from train.models, saved as a bare .keras file."""
    config = TrainConfig(**{**get_preset("tiny").to_dict(), "input_width": 112})  # template from the size
    keras.utils.set_random_seed(0)
    views = build_views(config, num_classes=7)
    _trained_looking(views.train_model)
    views.train_model.save(tmp_path / "tiny.keras")

    card = export_checkpoint(tmp_path / "tiny.keras", tmp_path / "out", savedmodel=False, fuse_prelu=True)

    report = ExportReport.load(tmp_path / "out")
    assert report.savedmodel_min_cosine is None
    assert report.prelu_fused == _count_prelus(views.train_model) > 0
    assert (card.input_height, card.input_width, card.embedding_size) == (112, 112, config.embedding_size)
    assert card.alignment_template == "arcface-112x112"
    assert not (tmp_path / "out" / "savedmodel").exists()
    x = parity_inputs(5, 112, 112, seed=3)
    got = _ort(tmp_path / "out" / "model.onnx").run(["embedding"], {"image": x})[0]
    want = views.embedding_model(x, training=False).numpy()
    assert row_cosines(got, want).min() >= 0.99999


@pytest.mark.slow
def test_full_size_mobilefacenet_exports_with_parity(tmp_path):
    config = get_preset("mobilefacenet")
    keras.utils.set_random_seed(0)
    views = build_views(config, num_classes=100)
    _trained_looking(views.train_model)
    TrainConfig.save(config, tmp_path)
    views.train_model.save(tmp_path / "model.keras")

    card = export_checkpoint(tmp_path, tmp_path / "out", fuse_prelu=True)

    report = ExportReport.load(tmp_path / "out")
    measured = recomputed_parity(tmp_path / "out", views.embedding_model, seed=7)
    assert measured["onnx"] >= 0.99999 and measured["savedmodel"] >= 0.99999
    assert report.prelu_fused == _count_prelus(views.train_model) > 0
    assert (card.input_height, card.input_width, card.embedding_size) == (112, 96, 128)
    assert card.alignment_template == "sphereface-112x96"
