"""The fit loop: folder dataset -> MobileFaceNet + ArcFace -> checkpoints, logs and model.keras."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import os
import time
from pathlib import Path

import keras
import numpy as np

from embedder.errors import DatasetError
from train.callbacks import PairVerification
from train.config import CONFIG_FILE, TrainConfig
from train.data import (
    LABELS_FILE,
    FolderDataset,
    find_unreadable,
    make_image_dataset,
    make_train_dataset,
    save_labels,
    scan_folder,
    split_holdout,
)
from train.metrics import make_pairs
from train.models import CHECKPOINT_DIR, MODEL_FILE, build_views

log = logging.getLogger(__name__)

LOG_CSV = "log.csv"
TENSORBOARD_DIR = "logs"


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What a run produced and how it went.

    Attributes:
        out_dir: the run folder (config.json, labels.json, model.keras, checkpoints/, logs/, log.csv).
        model_path: the final training model (`image`, `label` -> probabilities).
        num_classes: C.
        num_train_images: images trained on.
        num_val_images: held-out images the verification pairs were drawn from.
        history: per-epoch values of every logged metric (loss, accuracy, val_pair_acc, ...).
        initial_val_pair_acc: pair accuracy of the untrained model; None without held-out pairs.
        val_pair_acc: pair accuracy after the last epoch; None without held-out pairs.
        val_pair_threshold: its best threshold; None without held-out pairs.
        seconds: wall time of the whole run.
        skipped_images: files that could not be decoded and were left out.
    """

    out_dir: Path
    model_path: Path
    num_classes: int
    num_train_images: int
    num_val_images: int
    history: dict[str, list[float]]
    initial_val_pair_acc: float | None
    val_pair_acc: float | None
    val_pair_threshold: float | None
    seconds: float
    skipped_images: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """JSON-ready summary (paths as strings)."""
        d = dataclasses.asdict(self)
        d["out_dir"], d["model_path"] = str(self.out_dir), str(self.model_path)
        return d


def train(data_dir: str | os.PathLike, out_dir: str | os.PathLike, config: TrainConfig, *,
          verbose: int = 1) -> TrainResult:
    """Train MobileFaceNet + ArcFace on `data_dir/<identity>/*.jpg|png`.

    Holds out `config.val_fraction` of each identity's images (seeded) for pair verification,
    trains with SGD (Nesterov momentum) on categorical cross-entropy, and writes into `out_dir`:
    `config.json`, `labels.json`, `checkpoints/epoch-NNN.keras`, `logs/` (TensorBoard),
    `log.csv` and the final training model `model.keras`. Existing files there are replaced.

    Args:
        data_dir: the training folder.
        out_dir: the run folder (created).
        config: the resolved configuration; `config.seed` seeds everything.
        verbose: 0 silent, 1 progress bar, 2 one line per epoch (Keras' `fit` verbosity).

    Returns:
        A `TrainResult`.

    Raises:
        DatasetError: `data_dir` is missing, empty, or has fewer than two identities.
    """
    start = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    data, skipped = _readable(scan_folder(data_dir))
    if data.num_classes < 2:
        raise DatasetError(
            f"'{data_dir}' has {data.num_classes} identity; classification needs at least two: "
            "add one folder of images per identity"
        )
    train_idx, val_idx = split_holdout(data.labels, config.val_fraction, config.seed)
    train_data, val_data = data.subset(train_idx), data.subset(val_idx)
    log.info("%d images of %d identities: %d to train on, %d held out",
             len(data.paths), data.num_classes, len(train_idx), len(val_idx))

    out_dir = Path(out_dir)
    (out_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    config.save(out_dir / CONFIG_FILE)
    save_labels(out_dir / LABELS_FILE, data.class_names)

    views = build_views(config, data.num_classes)
    _compile(views.train_model, config)
    verification = _pair_verification(val_data, config, views.embedding_model)
    history = views.train_model.fit(
        make_train_dataset(train_data, config),
        epochs=config.epochs,
        steps_per_epoch=math.ceil(len(train_data.paths) / config.batch_size),
        callbacks=_callbacks(out_dir, config, verification),
        shuffle=False,  # make_train_dataset shuffles; Keras cannot shuffle a tf.data stream
        verbose=verbose,
    )
    model_path = _save_model(views.train_model, out_dir / MODEL_FILE)
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    result = TrainResult(
        out_dir=out_dir, model_path=model_path, num_classes=data.num_classes,
        num_train_images=len(train_data.paths), num_val_images=len(val_data.paths), history=hist,
        initial_val_pair_acc=verification.initial_accuracy if verification else None,
        val_pair_acc=hist["val_pair_acc"][-1] if verification else None,
        val_pair_threshold=hist["val_pair_threshold"][-1] if verification else None,
        seconds=time.perf_counter() - start,
        skipped_images=skipped,
    )
    log.info("trained %d epochs in %.1f s; pair accuracy %s -> %s; model: %s", config.epochs,
             result.seconds, result.initial_val_pair_acc, result.val_pair_acc, model_path)
    return result


def _readable(data: FolderDataset) -> tuple[FolderDataset, tuple[str, ...]]:
    skipped = find_unreadable(data.paths)
    if skipped:
        log.warning("skipping %d unreadable image(s), e.g. %s", len(skipped), ", ".join(skipped[:3]))
        bad = set(skipped)
        data = data.subset(np.array([i for i, p in enumerate(data.paths) if p not in bad], dtype=np.int64))
    return data, tuple(skipped)


def _compile(model: keras.Model, config: TrainConfig) -> None:
    model.compile(
        # Weight decay is L2 on the kernels (mobilefacenet.weight_decay_regularizer), coupled to the
        # gradient and so passed through momentum as in the paper's Caffe / insightface's PyTorch
        # SGD; Keras' SGD(weight_decay=...) is decoupled and would also decay BatchNorm and PReLU.
        optimizer=keras.optimizers.SGD(config.learning_rate, momentum=config.momentum, nesterov=True),
        # The model outputs softmax probabilities; Keras computes this loss from the logits under
        # the Softmax, so it stays exact where a probability underflows (tests/train check it).
        loss=keras.losses.CategoricalCrossentropy(),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )


def _pair_verification(val_data: FolderDataset, config: TrainConfig,
                       embedding_model: keras.Model) -> PairVerification | None:
    try:
        pairs, same = make_pairs(val_data.labels, config.val_pairs, config.seed)
    except DatasetError as e:
        log.warning("no pair verification during training: held-out images: %s", e)
        return None
    return PairVerification(make_image_dataset(val_data.paths, config), pairs, same, embedding_model)


def _callbacks(out_dir: Path, config: TrainConfig,
               verification: PairVerification | None) -> list[keras.callbacks.Callback]:
    # Order matters: each callback sees the logs the ones before it added.
    monitor, mode = ("val_pair_acc", "max") if verification else ("loss", "min")
    callbacks = [verification] if verification else []
    return callbacks + [
        keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, factor=config.lr_factor,
                                          patience=config.lr_patience, min_lr=config.min_learning_rate),
        keras.callbacks.ModelCheckpoint(str(out_dir / CHECKPOINT_DIR / "epoch-{epoch:03d}.keras")),
        keras.callbacks.CSVLogger(str(out_dir / LOG_CSV)),
    ] + _tensorboard(out_dir)


def _tensorboard(out_dir: Path) -> list[keras.callbacks.Callback]:
    # tf.summary needs the `tensorboard` package, which tensorflow-cpu 2.21 no longer pulls in.
    if importlib.util.find_spec("tensorboard") is None:
        log.warning("TensorBoard logs skipped: the `tensorboard` package is not installed; "
                    "log.csv has the same values (pip install tensorboard for logs/)")
        return []
    return [keras.callbacks.TensorBoard(str(out_dir / TENSORBOARD_DIR), write_graph=False, profile_batch=0)]


def _save_model(model: keras.Model, path: Path) -> Path:
    # Keras insists on a .keras suffix, so embedder.atomic's temp names do not fit; same idea.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
