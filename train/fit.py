"""The fit loop: folder or list-file dataset -> MobileFaceNet + ArcFace -> checkpoints, logs and model.keras."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

from embedder.errors import DatasetError, ModelSpecError
from train.callbacks import PairVerification
from train.config import CONFIG_FILE, TrainConfig
from train.data import (
    LABELS_FILE,
    FolderDataset,
    find_unreadable,
    load_labels,
    make_image_dataset,
    make_train_dataset,
    save_labels,
    scan_folder,
    split_holdout,
)
from train.metrics import make_pairs
from train.shards import (
    check_pair_batch,
    is_shard_folder,
    load_shards,
    make_shard_train_dataset,
    read_val_shard,
)
from train.models import (
    CHECKPOINT_DIR,
    MODEL_FILE,
    build_views,
    embedding_view,
    load_checkpoint,
    transfer_weights,
)

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
        initial_val_pair_acc: pair accuracy before the first epoch of this call (of the untrained
            model, or of the resumed checkpoint); None without held-out pairs.
        val_pair_acc: pair accuracy after the last epoch; None without held-out pairs.
        val_pair_threshold: its best threshold; None without held-out pairs.
        seconds: wall time of the whole run.
        skipped_images: files that could not be decoded and were left out.
        initial_epoch: epochs already done before this call (non-zero when resumed).
        optimizer_steps: the optimizer's update count at the end (it carries over a resume).
        loaded_layers: with `init_weights`, the layers whose weights were loaded.
        skipped_layers: with `init_weights`, the layers left as built (absent or shape mismatch).
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
    initial_epoch: int = 0
    optimizer_steps: int = 0
    loaded_layers: tuple[str, ...] = ()
    skipped_layers: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """JSON-ready summary (paths as strings)."""
        d = dataclasses.asdict(self)
        d["out_dir"], d["model_path"] = str(self.out_dir), str(self.model_path)
        return d


def train(data_dir: str | os.PathLike, out_dir: str | os.PathLike, config: TrainConfig, *,
          list_file: str | os.PathLike | None = None, resume: bool = False,
          init_weights: str | os.PathLike | None = None, verbose: int = 1) -> TrainResult:
    """Train MobileFaceNet + ArcFace on `data_dir/<identity>/*.jpg|png`, a list file or TFRecord shards.

    Holds out `config.val_fraction` of each identity's images (seeded) for pair verification,
    trains with SGD (Nesterov momentum) on categorical cross-entropy, and writes into `out_dir`:
    `config.json`, `labels.json`, `checkpoints/epoch-NNN.keras` (each with the optimizer state),
    `logs/` (TensorBoard), `log.csv` and the final training model `model.keras`. Existing files
    there are replaced, unless `resume`.

    Args:
        data_dir: the training folder; with `list_file`, the root its relative paths start from; or
            a shard folder from `train.shards.write_shards` (read in same-identity pairs; its
            hold-out was chosen when it was written, so `config.val_fraction` does not apply).
        out_dir: the run folder (created).
        config: the resolved configuration; `config.seed` seeds everything.
        list_file: `relative/path.jpg label` lines (`train.listfile.parse_list_file`).
        resume: continue the run in `out_dir` from its latest checkpoint: weights, optimizer state
            (step count, momentum, learning rate) and epoch number, and the same input stream
            (the batches an uninterrupted run would have seen next). `config` must equal the
            run's `config.json` except for `epochs`, which may be raised to train longer.
        init_weights: a `.keras` model or run folder to copy weights from, layer by layer by name;
            layers that are absent there or of other shapes (e.g. the ArcFace head of another
            number of classes) keep their initial weights. Not with `resume`.
        verbose: 0 silent, 1 progress bar, 2 one line per epoch (Keras' `fit` verbosity).

    Returns:
        A `TrainResult`.

    Raises:
        DatasetError: the data is missing, empty, malformed, has fewer than two identities, or
            (resume) other identities than the run was started with.
        ModelSpecError: (resume) no checkpoint, a different config, or nothing left to train;
            `init_weights` is not a loadable model.
    """
    if resume and init_weights is not None:
        raise ModelSpecError("--resume continues a run's own weights; it cannot take --init-weights too")
    start = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    inputs = _inputs(data_dir, list_file, config)
    if len(inputs.class_names) < 2:
        raise DatasetError(
            f"'{list_file or data_dir}' has {len(inputs.class_names)} identity; classification needs at least two: "
            "add one folder of images per identity"
        )
    log.info("%d identities: %d images to train on, %d held out",
             len(inputs.class_names), inputs.num_train, inputs.num_val)

    out_dir = Path(out_dir)
    train_model, initial_epoch, loaded, skipped_layers = _model(out_dir, config, inputs.class_names, resume,
                                                                init_weights)
    embedding_model = embedding_view(train_model)
    (out_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    config.save(out_dir / CONFIG_FILE)
    save_labels(out_dir / LABELS_FILE, inputs.class_names)

    verification = _pair_verification(inputs, config, embedding_model)
    steps = math.ceil(inputs.epoch_images / config.batch_size)
    history = train_model.fit(
        inputs.train_dataset(initial_epoch * steps),
        epochs=config.epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps,
        callbacks=_callbacks(out_dir, config, verification, append_log=resume),
        shuffle=False,  # make_train_dataset shuffles; Keras cannot shuffle a tf.data stream
        verbose=verbose,
    )
    model_path = _save_model(train_model, out_dir / MODEL_FILE)
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    result = TrainResult(
        out_dir=out_dir, model_path=model_path, num_classes=len(inputs.class_names),
        num_train_images=inputs.num_train, num_val_images=inputs.num_val, history=hist,
        initial_val_pair_acc=verification.initial_accuracy if verification else None,
        val_pair_acc=hist["val_pair_acc"][-1] if verification else None,
        val_pair_threshold=hist["val_pair_threshold"][-1] if verification else None,
        seconds=time.perf_counter() - start,
        skipped_images=inputs.skipped,
        initial_epoch=initial_epoch,
        optimizer_steps=int(train_model.optimizer.iterations.numpy()),
        loaded_layers=loaded,
        skipped_layers=skipped_layers,
    )
    log.info("trained epochs %d-%d in %.1f s; pair accuracy %s -> %s; model: %s", initial_epoch + 1,
             config.epochs, result.seconds, result.initial_val_pair_acc, result.val_pair_acc, model_path)
    return result


@dataclasses.dataclass(frozen=True)
class _Inputs:
    class_names: tuple[str, ...]
    num_train: int
    num_val: int
    epoch_images: int  # images per epoch: num_train, or more where shards pad identities to pairs
    skipped: tuple[str, ...]
    train_dataset: Callable[[int], tf.data.Dataset]  # skip_batches -> endless batches
    val_images: tf.data.Dataset | None  # in a fixed order, unaugmented
    val_labels: np.ndarray


def _inputs(data_dir: str | os.PathLike, list_file: str | os.PathLike | None, config: TrainConfig) -> _Inputs:
    """The training stream and held-out images of a folder, a list file or a shard folder."""
    if list_file is None and is_shard_folder(data_dir):
        shards = load_shards(data_dir)  # split at `prepare` time: config.val_fraction does not apply
        check_pair_batch(config)  # before the run folder is touched
        val_images, val_labels = (read_val_shard(shards, config) if shards.val_file
                                  else (None, np.zeros(0, np.int32)))
        return _Inputs(shards.class_names, int(shards.counts.sum()), shards.num_val, int(shards.pair_counts.sum()),
                       shards.skipped, lambda skip: make_shard_train_dataset(shards, config, skip),
                       val_images, val_labels)
    data, skipped = _readable(_scan(data_dir, list_file))
    train_idx, val_idx = split_holdout(data.labels, config.val_fraction, config.seed)
    train_data, val_data = data.subset(train_idx), data.subset(val_idx)
    return _Inputs(data.class_names, len(train_idx), len(val_idx), len(train_idx), skipped,
                   lambda skip: make_train_dataset(train_data, config, skip_batches=skip),
                   make_image_dataset(val_data.paths, config) if val_data.paths else None, val_data.labels)


def _scan(data_dir: str | os.PathLike, list_file: str | os.PathLike | None) -> FolderDataset:
    if list_file is None:
        return scan_folder(data_dir)
    from train.listfile import parse_list_file

    return parse_list_file(list_file, data_dir)


def _model(out_dir: Path, config: TrainConfig, class_names: tuple[str, ...], resume: bool,
           init_weights: str | os.PathLike | None) -> tuple[keras.Model, int, tuple[str, ...], tuple[str, ...]]:
    """The compiled training model, its first epoch, and the layers loaded / skipped from `init_weights`."""
    if resume:
        return *_resume_point(out_dir, config, class_names), (), ()
    model = build_views(config, len(class_names)).train_model
    loaded = skipped = ()
    if init_weights is not None:
        loaded, skipped = transfer_weights(model, load_checkpoint(init_weights))
        log.info("init weights from %s: %d layers loaded, %d left as built (%s)", init_weights,
                 len(loaded), len(skipped), ", ".join(skipped) or "none")
    compile_model(model, config)
    return model, 0, loaded, skipped


def _resume_point(out_dir: Path, config: TrainConfig, class_names: tuple[str, ...]) -> tuple[keras.Model, int]:
    """The latest checkpoint of a run (compiled, optimizer state included) and its epoch number."""
    saved = TrainConfig.load(out_dir)
    changed = sorted(k for k, v in config.to_dict().items() if k != "epochs" and saved.to_dict()[k] != v)
    if changed:
        diff = ", ".join(f"{k}: {saved.to_dict()[k]!r} -> {config.to_dict()[k]!r}" for k in changed)
        raise ModelSpecError(f"cannot resume '{out_dir}' with a different config ({diff}); only --epochs may "
                             "change: drop those flags, or start a new run with --out")
    if tuple(load_labels(out_dir)) != tuple(class_names):
        raise DatasetError(f"cannot resume '{out_dir}': the data's identities differ from its {LABELS_FILE}; "
                           "resume on the same data")
    checkpoints = sorted((out_dir / CHECKPOINT_DIR).glob("epoch-*.keras"))
    if not checkpoints:
        raise ModelSpecError(f"nothing to resume in '{out_dir}': no {CHECKPOINT_DIR}/epoch-*.keras yet; "
                             "start the run again with --out")
    epoch = int(re.fullmatch(r"epoch-(\d+)", checkpoints[-1].stem).group(1))
    if epoch >= config.epochs:
        raise ModelSpecError(f"run '{out_dir}' has already trained {epoch} of {config.epochs} epochs: "
                             f"pass --epochs greater than {epoch} to train on")
    model = load_checkpoint(checkpoints[-1])
    if model.optimizer is None:
        raise ModelSpecError(f"checkpoint '{checkpoints[-1]}' has no optimizer state; it cannot be resumed")
    log.info("resuming '%s' after epoch %d (optimizer step %d)", out_dir, epoch, int(model.optimizer.iterations))
    return model, epoch


def _readable(data: FolderDataset) -> tuple[FolderDataset, tuple[str, ...]]:
    skipped = find_unreadable(data.paths)
    if skipped:
        log.warning("skipping %d unreadable image(s), e.g. %s", len(skipped), ", ".join(skipped[:3]))
        bad = set(skipped)
        data = data.subset(np.array([i for i, p in enumerate(data.paths) if p not in bad], dtype=np.int64))
    return data, tuple(skipped)


def compile_model(model: keras.Model, config: TrainConfig) -> None:
    """Compile the training view: SGD with Nesterov momentum, cross-entropy, accuracy."""
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


def _pair_verification(inputs: _Inputs, config: TrainConfig,
                       embedding_model: keras.Model) -> PairVerification | None:
    try:
        pairs, same = make_pairs(inputs.val_labels, config.val_pairs, config.seed)
    except DatasetError as e:
        log.warning("no pair verification during training: held-out images: %s", e)
        return None
    return PairVerification(inputs.val_images, pairs, same, embedding_model)


def _callbacks(out_dir: Path, config: TrainConfig, verification: PairVerification | None,
               append_log: bool = False) -> list[keras.callbacks.Callback]:
    # Order matters: each callback sees the logs the ones before it added.
    monitor, mode = ("val_pair_acc", "max") if verification else ("loss", "min")
    callbacks = [verification] if verification else []
    return callbacks + [
        keras.callbacks.ReduceLROnPlateau(monitor=monitor, mode=mode, factor=config.lr_factor,
                                          patience=config.lr_patience, min_lr=config.min_learning_rate),
        keras.callbacks.ModelCheckpoint(str(out_dir / CHECKPOINT_DIR / "epoch-{epoch:03d}.keras")),
        keras.callbacks.CSVLogger(str(out_dir / LOG_CSV), append=append_log),
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
