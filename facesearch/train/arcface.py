"""ArcFace additive angular margin head: embeddings + one-hot labels -> scaled cosine logits."""

from __future__ import annotations

import math

import keras
from keras import ops

from facesearch.embedder.core.errors import ModelSpecError


@keras.saving.register_keras_serializable(package="facesearch")
class ArcFace(keras.layers.Layer):
    """Additive angular margin logits (Deng et al., ArcFace, https://arxiv.org/abs/1801.07698).

    With features and class weights L2-normalised, `cos(theta_j) = x . W_j`. The target class
    gets `s * cos(theta_y + m)`, every other class `s * cos(theta_j)`. Where `theta_y + m > pi`
    the margin would make `cos` increase again, so (as insightface does) the target logit falls
    back to `s * (cos(theta_y) - m * sin(m))`, which keeps the logit monotonic in theta.

    Call arguments:
        inputs: `[features, labels]`: `(n, d)` float embeddings (any norm) and `(n, C)` one-hot labels.

    Returns:
        `(n, C)` float32 logits; apply a softmax for class probabilities.
    """

    def __init__(self, num_classes: int, scale: float = 32.0, margin: float = 0.5,
                 kernel_initializer="glorot_uniform", kernel_regularizer=None,
                 epsilon: float = 1e-7, **kwargs):
        super().__init__(**kwargs)
        if num_classes < 1 or scale <= 0 or not 0.0 <= margin < math.pi / 2:
            raise ModelSpecError(
                f"ArcFace needs num_classes >= 1, scale > 0 and 0 <= margin < pi/2; "
                f"got {num_classes}, {scale}, {margin}"
            )
        self.num_classes = int(num_classes)
        self.scale = float(scale)
        self.margin = float(margin)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        feature_shape, _ = input_shape
        # (d, C): one column per class, normalised on use, so only its direction matters.
        self.kernel = self.add_weight(
            name="kernel",
            shape=(int(feature_shape[-1]), self.num_classes),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )

    def call(self, inputs):
        features, labels = inputs
        labels = ops.cast(labels, self.compute_dtype)
        x = _l2_normalize(features, axis=1, epsilon=self.epsilon)
        w = _l2_normalize(self.kernel, axis=0, epsilon=self.epsilon)
        # Clip so that sqrt(1 - cos^2) and its gradient stay finite at |cos| = 1.
        cos = ops.clip(ops.matmul(x, w), -1.0 + self.epsilon, 1.0 - self.epsilon)
        target = self._margin_cos(cos)
        return self.scale * (labels * target + (1.0 - labels) * cos)

    def _margin_cos(self, cos):
        # cos(theta + m) = cos theta cos m - sin theta sin m, with sin theta >= 0 on [0, pi].
        # Paper section 2.1 / insightface ArcFace: https://arxiv.org/abs/1801.07698
        m = self.margin
        sin = ops.sqrt(1.0 - ops.square(cos))
        cos_theta_m = cos * math.cos(m) - sin * math.sin(m)
        # theta + m <= pi  <=>  cos theta >= cos(pi - m); beyond it use cos theta - m sin m.
        threshold = math.cos(math.pi - m)
        fallback = cos - math.sin(math.pi - m) * m
        return ops.where(cos > threshold, cos_theta_m, fallback)

    def compute_output_shape(self, input_shape):
        feature_shape, _ = input_shape
        return (feature_shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            scale=self.scale,
            margin=self.margin,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            epsilon=self.epsilon,
        )
        return config


def _l2_normalize(x, axis: int, epsilon: float):
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), epsilon))
