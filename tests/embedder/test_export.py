"""Export: PReLU forms, SavedModel + ONNX files, model card, parity with Keras, safe replacement."""

from __future__ import annotations

import collections
import hashlib
import json
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

from facesearch.embedder.core.errors import ExportParityError, ModelSpecError  # noqa: E402
from facesearch.embedder.core.model_card import CARD_FILE, ModelCard, sha256_file  # noqa: E402
from facesearch.embedder.export import exporter, onnx_prelu  # noqa: E402
from facesearch.embedder.export.exporter import ExportReport, export_model, parity_inputs, row_cosines  # noqa: E402
from facesearch.embedder.export.onnx_prelu import fuse_prelu, rewrite_prelu  # noqa: E402
from facesearch.train.config import TrainConfig, get_preset  # noqa: E402
from facesearch.train.mobilefacenet import build_backbone  # noqa: E402
from facesearch.train.models import build_views, embedding_view, load_embedding_model  # noqa: E402

H, W, DIM, CLASSES = 112, 96, 8, 5
N_PRELU = 4
N_PER_CHANNEL = 3  # all but the unshared PReLU, whose slope varies over space: those take the "batchnorm" form


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


ALPHA = np.array([0.25, -0.5, 2.0], np.float32).reshape(3, 1, 1)


def _prelu_pattern_graph(x_is_output: bool, alpha: np.ndarray = ALPHA) -> onnx.ModelProto:
    """x (2, 3, 4, 4) -> Relu/Neg/Relu/Mul/Add with the constant as Neg(alpha), unfolded."""
    alpha = numpy_helper.from_array(alpha, "alpha")
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
    for form in ("prelu", "batchnorm"):
        rewritten, count = rewrite_prelu(model, form)
        assert count == 0
        assert [n.op_type for n in rewritten.graph.node] == [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("alpha", [ALPHA, np.float32(-0.75), ALPHA.reshape(1, 3, 1, 1)], ids=["c11", "scalar", "1c11"])
def test_batchnorm_form_matches_numpy_prelu(alpha):
    fused, count = rewrite_prelu(_prelu_pattern_graph(x_is_output=False, alpha=np.asarray(alpha)), "batchnorm")
    assert count == 1
    assert [n.op_type for n in fused.graph.node] == ["Identity", "BatchNormalization", "Relu", "BatchNormalization",
                                                     "Add"]
    assert all(a.f == 0.0 for n in fused.graph.node for a in n.attribute if a.name == "epsilon")
    x = np.random.default_rng(0).normal(size=(2, 3, 4, 4)).astype(np.float32)
    x[0, 0, 0, :2] = 0.0, -0.0
    want = np.where(x > 0, x, np.asarray(alpha) * x)
    np.testing.assert_allclose(_ort(fused).run(None, {"inp": x})[0], want, rtol=1e-6, atol=1e-7)


def test_batchnorm_form_leaves_a_slope_that_varies_over_space():
    # One slope per (c, h, w) cannot be a per-channel scale: that PReLU keeps tf2onnx's five ops.
    alpha = np.random.default_rng(0).uniform(-1, 1, (3, 4, 4)).astype(np.float32)
    model = _prelu_pattern_graph(x_is_output=False, alpha=alpha)
    rewritten, count = rewrite_prelu(model, "batchnorm")
    assert count == 0 and rewritten is model
    assert rewrite_prelu(model, "prelu")[1] == 1  # a PRelu node can take it


def test_unknown_prelu_form_is_refused(keras_embedder, tmp_path):
    with pytest.raises(ValueError, match="unknown PReLU form 'fast'"):
        rewrite_prelu(_prelu_pattern_graph(x_is_output=False), "fast")
    with pytest.raises(ValueError, match="unknown PReLU form 'fast'"):
        export_model(keras_embedder, tmp_path / "out", prelu="fast")
    with pytest.raises(ValueError, match="fuse_prelu=True asks for PRelu nodes but prelu='tf2onnx'"):
        export_model(keras_embedder, tmp_path / "out", prelu="tf2onnx", fuse_prelu=True)
    assert not (tmp_path / "out").exists()


def test_batchnorm_form_rewrites_per_channel_prelus_and_matches_keras(keras_embedder):
    signature = [tf.TensorSpec((None, H, W, 3), tf.float32, name="image")]
    unfused, _ = tf2onnx.convert.from_keras(keras_embedder, input_signature=signature, opset=17)

    rewritten, count = rewrite_prelu(unfused, "batchnorm")

    before = collections.Counter(n.op_type for n in unfused.graph.node)
    after = collections.Counter(n.op_type for n in rewritten.graph.node)
    assert count == N_PER_CHANNEL
    assert after["Neg"] == before["Neg"] - N_PER_CHANNEL == 1  # the unshared PReLU keeps its five ops
    assert after["BatchNormalization"] == before["BatchNormalization"] + 2 * N_PER_CHANNEL
    assert after["Relu"] == before["Relu"] - N_PER_CHANNEL and after["Mul"] == before["Mul"] - N_PER_CHANNEL
    assert after["Add"] == before["Add"] and "PRelu" not in after
    used = {i for n in rewritten.graph.node for i in n.input}
    assert {init.name for init in rewritten.graph.initializer} <= used, "dead initializers left behind"
    x = parity_inputs(9, H, W, seed=1)
    got = _ort(rewritten).run(None, {"image": x})[0]
    np.testing.assert_allclose(got, _ort(unfused).run(None, {"image": x})[0], rtol=1e-5, atol=1e-6)
    assert row_cosines(got, keras_embedder(x, training=False).numpy()).min() >= 0.99999


def _ort_optimized_ops(proto: onnx.ModelProto, tmp_path) -> collections.Counter:
    """Operator counts of the graph ONNX Runtime runs at its default (full) optimisation level."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / f"optimized-{len(list(tmp_path.iterdir()))}.onnx")
    ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)


def _check_blocked_layout_throughout(model: keras.Model, tmp_path) -> None:
    """The "batchnorm" form keeps ONNX Runtime's NCHWc convolutions blocked from the first to the last."""
    n_prelu = _count_prelus(model)
    five_op, _ = exporter.convert_to_onnx(model, prelu="tf2onnx")
    ops = _ort_optimized_ops(five_op, tmp_path)
    if not ops["ReorderOutput"]:
        pytest.skip("ONNX Runtime's NCHWc layout pass does not run on this CPU (no AVX2 / AVX-512)")
    # The problem the form solves, seen by this test: every PReLU leaves the blocked layout and comes back.
    assert ops["ReorderInput"] >= n_prelu and ops["ReorderOutput"] >= n_prelu

    proto, count = exporter.convert_to_onnx(model)
    assert count == n_prelu
    ops = _ort_optimized_ops(proto, tmp_path)
    # One ReorderOutput, before the final Reshape; the PReLUs' scales became convolutions.
    assert ops["ReorderInput"] == 0 and ops["ReorderOutput"] == 1, ops
    assert not {"BatchNormalization", "Neg", "Mul", "PRelu"} & set(ops), ops
    _, height, width, _ = model.input_shape
    x = parity_inputs(8, height, width, seed=2)
    assert row_cosines(_ort(proto).run(None, {"image": x})[0], model(x, training=False).numpy()).min() >= 0.99999


def test_tiny_mobilefacenet_stays_in_onnx_runtimes_blocked_layout(tmp_path):
    # 16 stem channels: every convolution's channels are then a multiple of the NCHWc block (8 or 16).
    config = TrainConfig(**{**get_preset("tiny").to_dict(), "stem_channels": 16})
    keras.utils.set_random_seed(0)
    _check_blocked_layout_throughout(_trained_looking(build_backbone(config)), tmp_path)


@pytest.mark.slow
def test_full_size_mobilefacenet_stays_in_onnx_runtimes_blocked_layout(tmp_path):
    keras.utils.set_random_seed(0)
    _check_blocked_layout_throughout(_trained_looking(build_backbone(get_preset("mobilefacenet"))), tmp_path)


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
        "from facesearch.embedder.export.exporter import convert_to_onnx\n"
        "from facesearch.train.models import load_embedding_model\n"
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
    assert report.name == card.name and report.parity_samples == 64
    assert (report.prelu_form, report.prelu_fused) == ("batchnorm", N_PER_CHANNEL)
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
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Neg") == N_PRELU - N_PER_CHANNEL and "PRelu" not in ops  # the "batchnorm" form by default
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


@pytest.mark.parametrize("options, form, marker, count", [
    ({}, "batchnorm", "BatchNormalization", 2 * N_PER_CHANNEL),
    ({"prelu": "tf2onnx"}, "tf2onnx", "Neg", N_PRELU),
    ({"prelu": "prelu"}, "prelu", "PRelu", N_PRELU),
    ({"fuse_prelu": True}, "prelu", "PRelu", N_PRELU),  # facesearch export --fuse-prelu
])
def test_export_writes_the_prelu_form_asked_for(keras_embedder, tmp_path, options, form, marker, count):
    export_model(keras_embedder, tmp_path / "out", savedmodel=False, **options)
    report = ExportReport.load(tmp_path / "out")
    ops = [n.op_type for n in onnx.load(tmp_path / "out" / "model.onnx").graph.node]
    assert report.prelu_form == form and ops.count(marker) == count
    assert report.prelu_fused == {"batchnorm": N_PER_CHANNEL, "prelu": N_PRELU, "tf2onnx": 0}[form]
    assert recomputed_parity(tmp_path / "out", keras_embedder, seed=5)["onnx"] >= 0.99999


def test_reports_from_before_prelu_forms_still_load(exported, tmp_path):
    for fused, form in ((0, "tf2onnx"), (4, "prelu")):
        shutil.copytree(exported[1], tmp_path / form)
        fields = json.loads((tmp_path / form / "export_report.json").read_text())
        del fields["prelu_form"]
        fields["prelu_fused"] = fused
        (tmp_path / form / "export_report.json").write_text(json.dumps(fields))
        assert ExportReport.load(tmp_path / form).prelu_form == form


def test_a_sign_flipped_slope_in_the_batchnorm_form_is_refused(keras_embedder, tmp_path, monkeypatch):
    # The parity proof guards the rewrite too: a slope that lost its sign must not reach a model folder.
    real = onnx_prelu._per_channel
    monkeypatch.setattr(onnx_prelu, "_per_channel", lambda slope, shape: None if (a := real(slope, shape)) is None else -a)
    with pytest.raises(ExportParityError, match="ONNX export does not reproduce"):
        export_model(keras_embedder, tmp_path / "out", savedmodel=False)
    assert not (tmp_path / "out").exists()


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
    """The real backbone + ArcFace head from facesearch.train.models, saved as a bare .keras file."""
    config = TrainConfig(**{**get_preset("tiny").to_dict(), "input_width": 112})  # template from the size
    keras.utils.set_random_seed(0)
    views = build_views(config, num_classes=7)
    _trained_looking(views.train_model)
    views.train_model.save(tmp_path / "tiny.keras")

    card = export_checkpoint(tmp_path / "tiny.keras", tmp_path / "out", savedmodel=False)

    report = ExportReport.load(tmp_path / "out")
    assert report.savedmodel_min_cosine is None
    assert report.prelu_form == "batchnorm" and report.prelu_fused == _count_prelus(views.train_model) > 0
    assert report.onnx_min_cosine >= 0.99999
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

    card = export_checkpoint(tmp_path, tmp_path / "out")

    report = ExportReport.load(tmp_path / "out")
    measured = recomputed_parity(tmp_path / "out", views.embedding_model, seed=7)
    assert measured["onnx"] >= 0.99999 and measured["savedmodel"] >= 0.99999
    assert report.onnx_min_cosine >= 0.99999 and report.savedmodel_min_cosine >= 0.99999
    assert report.prelu_form == "batchnorm" and report.prelu_fused == _count_prelus(views.train_model) == 33
    proto, _ = exporter.convert_to_onnx(views.embedding_model, prelu="prelu")  # the single-node form too
    x = parity_inputs(16, 112, 96, seed=8)
    assert row_cosines(_ort(proto).run(["embedding"], {"image": x})[0],
                       views.embedding_model(x, training=False).numpy()).min() >= 0.99999
    assert (card.input_height, card.input_width, card.embedding_size) == (112, 96, 128)
    assert card.alignment_template == "sphereface-112x96"
