"""ArcFace logits against an independent numpy formula; config round trip; finite gradients."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from facesearch.train.arcface import ArcFace

S, M = 32.0, 0.5


def reference_logits(features, weights, labels, s, m):
    """Written from the paper, via angles: s*cos(theta + m) for the target, s*cos(theta) otherwise;
    where theta + m would pass pi, the insightface fallback s*(cos(theta) - m*sin(m))."""
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    w = weights / np.linalg.norm(weights, axis=0, keepdims=True)
    cos = x @ w
    theta = np.arccos(np.clip(cos, -1.0, 1.0))
    target = np.where(theta + m <= np.pi, np.cos(theta + m), cos - m * np.sin(m))
    return s * np.where(labels == 1, target, cos), theta


def make_inputs(seed=0, n=8, d=6, classes=5):
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(d, classes)).astype(np.float32)
    features = rng.normal(size=(n, d)).astype(np.float32)
    labels = np.eye(classes, dtype=np.float32)[rng.integers(0, classes, n)]
    # Sample 0 points almost opposite its class centre: theta + m > pi, the fallback branch.
    target = labels[0].argmax()
    features[0] = -weights[:, target] + 0.01 * rng.normal(size=d)
    # Sample 1 lies exactly on its class centre: cos = 1, where the sqrt needs the clip.
    features[1] = 3.0 * weights[:, labels[1].argmax()]
    return features, weights, labels


def arcface_with(weights, **kwargs):
    layer = ArcFace(weights.shape[1], **kwargs)
    layer.build([(None, weights.shape[0]), (None, weights.shape[1])])
    layer.kernel.assign(weights)
    return layer


def test_logits_match_numpy_formula():
    features, weights, labels = make_inputs()
    got = keras.ops.convert_to_numpy(arcface_with(weights, scale=S, margin=M)([features, labels]))
    want, theta = reference_logits(features, weights, labels, S, M)
    target_theta = theta[labels == 1]
    assert target_theta[0] + M > math.pi  # the fallback really is exercised
    assert np.any(target_theta[1:] + M < math.pi)
    np.testing.assert_allclose(np.delete(got, 1, axis=0), np.delete(want, 1, axis=0), atol=2e-4)
    # Non-target classes are exactly s * cos(theta).
    np.testing.assert_allclose(got[labels == 0], want[labels == 0], atol=2e-4)
    # At cos = 1 the clip to 1 - eps (float32: 1 - 1.2e-7) moves theta by sqrt(2.4e-7) = 5e-4 rad.
    np.testing.assert_allclose(got[1], want[1], atol=S * math.sin(M) * 5e-4)


def test_margin_lowers_only_the_target_logit():
    features, weights, labels = make_inputs(seed=1)
    with_margin = keras.ops.convert_to_numpy(arcface_with(weights, scale=S, margin=M)([features, labels]))
    no_margin = keras.ops.convert_to_numpy(arcface_with(weights, scale=S, margin=0.0)([features, labels]))
    assert np.all(with_margin[labels == 1] < no_margin[labels == 1])
    np.testing.assert_allclose(with_margin[labels == 0], no_margin[labels == 0], atol=1e-5)


def test_gradients_are_finite_at_cos_one():
    features, weights, labels = make_inputs()
    layer = arcface_with(weights, scale=S, margin=M)
    x = tf.constant(features)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer([x, labels]))
    grads = tape.gradient(loss, [x, layer.kernel])
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)


def test_get_config_round_trip():
    features, weights, labels = make_inputs()
    layer = arcface_with(weights, scale=16.0, margin=0.3, kernel_regularizer=keras.regularizers.L2(2e-4),
                         name="head")
    config = layer.get_config()
    assert {config[k] for k in ("num_classes", "scale", "margin")} == {5, 16.0, 0.3}
    clone = ArcFace.from_config(config)
    assert clone.get_config() == config
    assert clone.kernel_regularizer.l2 == pytest.approx(2e-4)
    clone.build([(None, 6), (None, 5)])
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(clone([features, labels])),
                                  keras.ops.convert_to_numpy(layer([features, labels])))
    # Registered, so a .keras file can name it.
    assert keras.saving.get_registered_name(ArcFace) == "facesearch>ArcFace"
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, ArcFace) and restored.get_config() == config


def test_output_shape():
    layer = ArcFace(7)
    out = layer([np.ones((3, 4), np.float32), np.eye(7, dtype=np.float32)[:3]])
    assert tuple(out.shape) == (3, 7) == layer.compute_output_shape([(3, 4), (3, 7)])
