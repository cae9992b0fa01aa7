"""Keras callbacks around the pure metrics: pair verification on held-out images."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from train.metrics import best_threshold_accuracy, pair_scores
from train.models import embedding_view


class PairVerification(keras.callbacks.Callback):
    """At each epoch end, embed held-out images and log pair-verification accuracy.

    Adds `val_pair_acc` and `val_pair_threshold` (best single threshold on these pairs) to the
    epoch logs, so callbacks after it in the list (CSVLogger, TensorBoard, ReduceLROnPlateau,
    History) see them. `initial_accuracy` holds the untrained accuracy, measured at train begin.

    Args:
        images: dataset of `(b, H, W, 3)` float32 batches, in a fixed order, no augmentation.
        pairs: `(p, 2)` int indices into the images, in dataset order.
        same: `(p,)` bool, True where the pair shows one label.
        embedding_model: the image -> embedding view; by default truncated from the trained model.
    """

    def __init__(self, images: tf.data.Dataset, pairs: np.ndarray, same: np.ndarray,
                 embedding_model: keras.Model | None = None):
        super().__init__()
        self.images = images
        self.pairs = np.asarray(pairs)
        self.same = np.asarray(same, bool)
        self.embedding_model = embedding_model
        self.initial_accuracy: float | None = None

    def evaluate(self) -> tuple[float, float]:
        """Return `(accuracy, threshold)` of the current weights on the pairs."""
        model = self.embedding_model or embedding_view(self.model)
        embeddings = model.predict(self.images, verbose=0)
        scores = pair_scores(embeddings[self.pairs[:, 0]], embeddings[self.pairs[:, 1]])
        return best_threshold_accuracy(scores, self.same)

    def on_train_begin(self, logs=None):
        self.initial_accuracy, _ = self.evaluate()

    def on_epoch_end(self, epoch, logs=None):
        accuracy, threshold = self.evaluate()
        if logs is not None:
            logs["val_pair_acc"] = accuracy
            logs["val_pair_threshold"] = threshold
