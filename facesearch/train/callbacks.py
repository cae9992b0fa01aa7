"""Keras callbacks around the pure metrics: pair verification on held-out images; the step learning-rate schedule."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from facesearch.embedder.evaluation.metrics import VerificationReport, pair_scores, verify_pairs
from facesearch.train.config import TrainConfig
from facesearch.train.models import embedding_view


class PairVerification(keras.callbacks.Callback):
    """At each epoch end, embed held-out images and log pair-verification figures.

    The figures are `facesearch.embedder.evaluation.metrics.verify_pairs`, the function `facesearch eval lfw` reports:
    `val_pair_acc` is the k-fold accuracy (threshold chosen on the other folds, `folds` stratified
    folds), `val_pair_threshold` the best single threshold on all the pairs, `val_pair_auc` the
    ROC AUC. They go into the epoch logs, so callbacks after this one in the list (CSVLogger,
    TensorBoard, ReduceLROnPlateau, History) see them. `initial_accuracy` holds the untrained
    k-fold accuracy, measured at the first train begin; `report` the last full report.

    Args:
        images: dataset of `(b, H, W, 3)` float32 batches, in a fixed order, no augmentation.
        pairs: `(p, 2)` int indices into the images, in dataset order.
        same: `(p,)` bool, True where the pair shows one label.
        embedding_model: the image -> embedding view; by default truncated from the trained model.
        folds: folds of the k-fold accuracy (LFW's protocol uses 10), or `(p,)` int fold ids
            (those of a `pairs.txt`).
    """

    def __init__(self, images: tf.data.Dataset, pairs: np.ndarray, same: np.ndarray,
                 embedding_model: keras.Model | None = None, folds: int | np.ndarray = 10):
        super().__init__()
        self.images = images
        self.pairs = np.asarray(pairs)
        self.same = np.asarray(same, bool)
        self.embedding_model = embedding_model
        self.folds = folds
        self.initial_accuracy: float | None = None
        self.report: VerificationReport | None = None

    def evaluate(self) -> VerificationReport:
        """The verification report of the current weights on the pairs."""
        model = self.embedding_model or embedding_view(self.model)
        embeddings = model.predict(self.images, verbose=0)
        scores = pair_scores(embeddings[self.pairs[:, 0]], embeddings[self.pairs[:, 1]])
        self.report = verify_pairs(scores, self.same, self.folds, far_targets=())
        return self.report

    def on_train_begin(self, logs=None):
        if self.initial_accuracy is None:  # a resume in mid-epoch calls fit twice
            self.initial_accuracy = self.evaluate().accuracy

    def on_epoch_end(self, epoch, logs=None):
        report = self.evaluate()
        if logs is not None:
            logs["val_pair_acc"] = report.accuracy
            logs["val_pair_threshold"] = report.threshold
            logs["val_pair_auc"] = report.auc


def step_learning_rate(epoch: int, config: TrainConfig) -> float:
    """The step schedule: `learning_rate * lr_factor ** k` in epoch `epoch` (0-based), k = boundaries <= epoch.

    With `lr_steps = (8, 14)` epochs 0-7 train at the base rate, 8-13 at `lr_factor` times it, 14 on at
    `lr_factor ** 2` times it.
    """
    return config.learning_rate * config.lr_factor ** sum(1 for boundary in config.lr_steps if boundary <= epoch)


def learning_rate_callback(config: TrainConfig, monitor: str, mode: str) -> keras.callbacks.Callback:
    """The learning-rate callback of `config.lr_schedule`; both log `learning_rate` each epoch."""
    if config.lr_schedule == "step":
        return keras.callbacks.LearningRateScheduler(lambda epoch, lr: step_learning_rate(epoch, config))
    return keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, factor=config.lr_factor,
                                             patience=config.lr_patience, min_lr=config.min_learning_rate)
