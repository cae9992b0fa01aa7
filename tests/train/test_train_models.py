"""Training / embedding views: shared weights, .keras round trip, truncation by name, stable loss."""

import dataclasses

import keras
import numpy as np
import pytest

from facesearch.embedder.core.errors import ModelSpecError
from facesearch.train.config import PRESETS
from facesearch.train.models import build_views, embedding_view, load_checkpoint

TINY = PRESETS["tiny"]
CLASSES = 5


def randomize(model: keras.Model, seed: int) -> None:
    """Give every weight (BatchNorm statistics too) a random value, so round trips prove something."""
    rng = np.random.default_rng(seed)
    model.set_weights([np.abs(rng.normal(0.5, 0.2, w.shape)).astype(np.float32) if "variance" in w.path
                       else rng.normal(0, 0.3, w.shape).astype(np.float32) for w in model.weights])


def batch(seed: int, n: int = 4):
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, TINY.input_height, TINY.input_width, 3)).astype(np.float32)
    labels = np.eye(CLASSES, dtype=np.float32)[rng.integers(0, CLASSES, n)]
    return {"image": images, "label": labels}


@pytest.fixture
def views():
    keras.utils.set_random_seed(0)
    v = build_views(TINY, CLASSES)
    randomize(v.train_model, seed=1)
    return v


def test_views_share_weights(views):
    train_ids = {id(w) for w in views.train_model.weights}
    assert all(id(w) in train_ids for w in views.embedding_model.weights)
    assert len(views.train_model.weights) == len(views.embedding_model.weights) + 1  # + ArcFace kernel
    x = batch(2)["image"]
    before = views.embedding_model.predict(x, verbose=0)
    layer = views.train_model.get_layer("head_linear_conv")
    layer.kernel.assign(layer.kernel * 2.0)
    assert not np.allclose(views.embedding_model.predict(x, verbose=0), before)


def test_train_view_outputs_probabilities(views):
    probabilities = views.train_model.predict(batch(3), verbose=0)
    assert probabilities.shape == (4, CLASSES)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_keras_file_round_trip(views, tmp_path):
    x = batch(4)
    path = tmp_path / "model.keras"
    views.train_model.save(path)
    loaded = load_checkpoint(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), views.train_model.predict(x, verbose=0))
    truncated = embedding_view(loaded)
    assert [t.name for t in truncated.inputs] == ["image"]
    np.testing.assert_array_equal(truncated.predict(x["image"], verbose=0),
                                  views.embedding_model.predict(x["image"], verbose=0))
    np.testing.assert_array_equal(embedding_view(views.train_model).predict(x["image"], verbose=0),
                                  views.embedding_model.predict(x["image"], verbose=0))


def test_load_checkpoint_from_run_folder(views, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    views.train_model.save(tmp_path / "checkpoints" / "epoch-001.keras")
    randomize(views.train_model, seed=9)
    views.train_model.save(tmp_path / "checkpoints" / "epoch-002.keras")
    x = batch(5)
    want = views.train_model.predict(x, verbose=0)
    # No model.keras yet (an interrupted run): the latest checkpoint.
    np.testing.assert_array_equal(load_checkpoint(tmp_path).predict(x, verbose=0), want)
    views.embedding_model.save(tmp_path / "model.keras")
    assert load_checkpoint(tmp_path).name == views.embedding_model.name


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(ModelSpecError, match="no model at"):
        load_checkpoint(tmp_path / "missing")
    with pytest.raises(ModelSpecError, match="holds no model.keras"):
        load_checkpoint(tmp_path)
    (tmp_path / "weights.h5").write_bytes(b"")
    with pytest.raises(ModelSpecError, match="not a .keras file"):
        load_checkpoint(tmp_path / "weights.h5")
    (tmp_path / "broken.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelSpecError, match="cannot load"):
        load_checkpoint(tmp_path / "broken.keras")


def test_embedding_view_needs_the_named_layer():
    image = keras.Input((8, 8, 3), name="image")
    model = keras.Model(image, keras.layers.Flatten(name="features")(image))
    with pytest.raises(ModelSpecError, match="layer 'embedding'"):
        embedding_view(model)


def test_loss_is_computed_from_logits(tmp_path):
    # A target far from its class centre has a probability below float32's epsilon; clipped
    # probabilities would cap the loss near -log(1e-7) = 16.1 and stop its gradient.
    config = dataclasses.replace(TINY, weight_decay=0.0, head_weight_decay=0.0)
    keras.utils.set_random_seed(0)
    views = build_views(config, CLASSES)
    model = views.train_model
    model.compile(optimizer="sgd", loss=keras.losses.CategoricalCrossentropy())
    x = batch(6, n=8)
    embeddings = views.embedding_model.predict(x["image"], verbose=0)
    kernel = np.random.default_rng(0).normal(size=(128, CLASSES)).astype(np.float32)
    kernel[:, x["label"][0].argmax()] = -embeddings[0]
    model.get_layer("arcface").kernel.assign(kernel)
    logits = keras.Model(model.inputs, model.get_layer("arcface").output).predict(x, verbose=0)
    log_softmax = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    want = -(x["label"] * log_softmax).sum(axis=1)
    assert want[0] > 20.0
    got = model.evaluate(x, x["label"], batch_size=8, verbose=0)
    assert got == pytest.approx(want.mean(), rel=1e-4)
