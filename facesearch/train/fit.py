"""The fit loop: folder, list-file or shard dataset -> MobileFaceNet + ArcFace -> checkpoints, logs and model.keras."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from facesearch.embedder.core.atomic import atomic_path
from facesearch.embedder.core.errors import DatasetError, ModelSpecError
from facesearch.embedder.evaluation.lfw import locate_images, read_pairs
from facesearch.embedder.evaluation.metrics import make_pairs
from facesearch.train.callbacks import PairVerification, learning_rate_callback
from facesearch.train.checkpoints import CHECKPOINT_DIR, Checkpointer, Position, latest_checkpoint, save_model
from facesearch.train.config import CONFIG_FILE, RESUMABLE_FIELDS, TrainConfig
from facesearch.train.data import (
    LABELS_FILE,
    FolderDataset,
    find_unreadable,
    load_labels,
    make_image_dataset,
    make_train_dataset,
    save_labels,
    scan_training_folder,
    split_holdout,
)
from facesearch.train.models import (
    MODEL_FILE,
    build_views,
    embedding_view,
    load_checkpoint,
    transfer_weights,
)
from facesearch.train.precision import is_mixed_checkpoint, precision_policy, use_mixed_precision
from facesearch.train.shards import (
    check_pair_batch,
    is_shard_folder,
    load_shards,
    make_shard_train_dataset,
    read_val_shard,
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
        initial_step: batches already drawn before this call (resumed from a step checkpoint:
            not a multiple of the epoch's).
        optimizer_steps: the optimizer's update count at the end (it carries over a resume;
            under mixed precision, steps skipped for a non-finite loss-scaled gradient do not count).
        loaded_layers: with `init_weights`, the layers whose weights were loaded.
        skipped_layers: with `init_weights`, the layers left as built (absent or shape mismatch).
        mixed_precision: whether the backbone computed in float16 (`config.mixed_precision` resolved).
        val_pairs_from: "held-out images", or the pair file verified at each epoch end.
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
    initial_step: int = 0
    mixed_precision: bool = False
    val_pairs_from: str = "held-out images"

    def to_dict(self) -> dict:
        """JSON-ready summary (paths as strings)."""
        d = dataclasses.asdict(self)
        d["out_dir"], d["model_path"] = str(self.out_dir), str(self.model_path)
        return d


def train(data_dir: str | os.PathLike, out_dir: str | os.PathLike, config: TrainConfig, *,
          list_file: str | os.PathLike | None = None, resume: bool = False,
          init_weights: str | os.PathLike | None = None, verbose: int = 1) -> TrainResult:
    """Train MobileFaceNet + ArcFace on `data_dir/<identity>/*.jpg|png`, a list file or TFRecord shards.

    Holds out `config.val_fraction` of each identity's images (seeded) for pair verification
    (or, with `config.val_pair_file`, verifies the pairs of that LFW-format file), trains with SGD
    (Nesterov momentum) on categorical cross-entropy, and writes into `out_dir`: `config.json`,
    `labels.json`, `checkpoints/` (`facesearch.train.checkpoints`, each with the optimizer state), `logs/`
    (TensorBoard), `log.csv` and the final training model `model.keras`. Existing files there are
    replaced, unless `resume`. Under `config.mixed_precision` the backbone computes in float16
    (Keras' global policy is set for the run and restored after it).

    Args:
        data_dir: the training folder; with `list_file`, the root its relative paths start from; or
            a shard folder from `facesearch.train.shards.write_shards` (read in same-identity pairs; its
            hold-out was chosen when it was written, so `config.val_fraction` does not apply).
        out_dir: the run folder (created).
        config: the resolved configuration; `config.seed` seeds everything.
        list_file: `relative/path.jpg label` lines (`facesearch.train.listfile.parse_list_file`).
        resume: continue the run in `out_dir` from its latest checkpoint, an epoch's or a step's:
            weights, optimizer state (step count, momentum, learning rate), and the same input
            stream (the batches an uninterrupted run would have seen next). `config` must equal
            the run's `config.json` except for `config.RESUMABLE_FIELDS` (`epochs` may grow).
        init_weights: a `.keras` model or run folder to copy weights from, layer by layer by name;
            layers that are absent there or of other shapes (e.g. the ArcFace head of another
            number of classes) keep their initial weights. Not with `resume`.
        verbose: 0 silent, 1 progress bar, 2 one line per epoch (Keras' `fit` verbosity).

    Returns:
        A `TrainResult`.

    Raises:
        DatasetError: the data is missing, empty, malformed, has fewer than two identities, or
            (resume) other identities than the run was started with; the pair file's images are
            missing or unreadable.
        ModelSpecError: (resume) no checkpoint, a different config, another precision, or nothing
            left to train; `init_weights` is not a loadable model.
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
    validation = _validation_pairs(inputs, config)  # a pair file's missing images fail here, not at epoch end
    out_dir = Path(out_dir)
    steps = math.ceil(inputs.epoch_images / config.batch_size)
    checkpoint = _resume_checkpoint(out_dir, config, inputs.class_names, steps) if resume else None
    mixed = _mixed_precision(config, checkpoint)
    with precision_policy(mixed):
        train_model, loaded, skipped_layers = _model(config, len(inputs.class_names), checkpoint, init_weights)
        start_step = checkpoint[0].step(steps) if checkpoint else 0
        (out_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        config.save(out_dir / CONFIG_FILE)
        save_labels(out_dir / LABELS_FILE, inputs.class_names)
        if resume:
            _trim_log(out_dir / LOG_CSV, start_step // steps)
        verification = None
        if validation:
            images, pairs, same, folds = validation
            verification = PairVerification(images, pairs, same, embedding_view(train_model), folds=folds)
        callbacks = _callbacks(out_dir, config, verification, steps, start_step, append_log=resume)
        hist = _fit(train_model, inputs, config, steps, start_step, callbacks, verbose)
        model_path = save_model(train_model, out_dir / MODEL_FILE)
    result = TrainResult(
        out_dir=out_dir, model_path=model_path, num_classes=len(inputs.class_names),
        num_train_images=inputs.num_train, num_val_images=inputs.num_val, history=hist,
        initial_val_pair_acc=verification.initial_accuracy if verification else None,
        val_pair_acc=hist["val_pair_acc"][-1] if verification else None,
        val_pair_threshold=hist["val_pair_threshold"][-1] if verification else None,
        seconds=time.perf_counter() - start,
        skipped_images=inputs.skipped,
        initial_epoch=start_step // steps,
        initial_step=start_step,
        optimizer_steps=int(train_model.optimizer.iterations.numpy()),
        loaded_layers=loaded,
        skipped_layers=skipped_layers,
        mixed_precision=mixed,
        val_pairs_from=config.val_pair_file or "held-out images",
    )
    log.info("trained epochs %d-%d in %.1f s; pair accuracy %s -> %s; model: %s", result.initial_epoch + 1,
             config.epochs, result.seconds, result.initial_val_pair_acc, result.val_pair_acc, model_path)
    return result


def _fit(model: keras.Model, inputs: _Inputs, config: TrainConfig, steps: int, start_step: int,
         callbacks: list[keras.callbacks.Callback], verbose: int) -> dict[str, list[float]]:
    """Run `fit` from batch `start_step` to the end of `config.epochs`; the per-epoch history."""
    epoch, batch = divmod(start_step, steps)
    # (first batch, first epoch, last epoch, batches per epoch). A resume in mid-epoch first finishes
    # that epoch alone, so every later epoch starts on the batch the uninterrupted run started it on.
    phases = [(start_step, epoch, epoch + 1, steps - batch)] if batch else []
    if epoch + bool(batch) < config.epochs:
        phases.append(((epoch + bool(batch)) * steps, epoch + bool(batch), config.epochs, steps))
    history: dict[str, list[float]] = {}
    for first_batch, first_epoch, last_epoch, epoch_steps in phases:
        h = model.fit(
            inputs.train_dataset(first_batch),
            epochs=last_epoch,
            initial_epoch=first_epoch,
            steps_per_epoch=epoch_steps,
            callbacks=callbacks,
            shuffle=False,  # make_train_dataset shuffles; Keras cannot shuffle a tf.data stream
            verbose=verbose,
        )
        for key, values in h.history.items():
            history.setdefault(key, []).extend(float(v) for v in values)
    return history


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
        if config.cache:
            raise ModelSpecError("--cache is for folder and list-file input: shards are already one sequential "
                                 "read per identity; drop --cache / --cache-file")
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
        return scan_training_folder(data_dir)
    from facesearch.train.listfile import parse_list_file

    return parse_list_file(list_file, data_dir)


def _model(config: TrainConfig, num_classes: int, checkpoint: tuple[Position, Path, bool] | None,
           init_weights: str | os.PathLike | None) -> tuple[keras.Model, tuple[str, ...], tuple[str, ...]]:
    """The compiled training model (under the current dtype policy); the layers loaded / skipped from `init_weights`."""
    if checkpoint is not None:
        model = load_checkpoint(checkpoint[1], as_saved=True)
        if model.optimizer is None:
            raise ModelSpecError(f"checkpoint '{checkpoint[1]}' has no optimizer state; it cannot be resumed")
        log.info("resuming from %s (optimizer step %d)", checkpoint[1], int(model.optimizer.iterations))
        return model, (), ()
    model = build_views(config, num_classes).train_model
    loaded = skipped = ()
    if init_weights is not None:
        loaded, skipped = transfer_weights(model, load_checkpoint(init_weights))
        log.info("init weights from %s: %d layers loaded, %d left as built (%s)", init_weights,
                 len(loaded), len(skipped), ", ".join(skipped) or "none")
    compile_model(model, config)
    return model, loaded, skipped


def _resume_checkpoint(out_dir: Path, config: TrainConfig, class_names: tuple[str, ...],
                       steps: int) -> tuple[Position, Path, bool]:
    """The latest checkpoint of a run to resume: its stream position, file and precision (True: mixed)."""
    saved = TrainConfig.load(out_dir).to_dict()
    changed = sorted(k for k, v in config.to_dict().items() if k not in RESUMABLE_FIELDS and saved[k] != v)
    if changed:
        diff = ", ".join(f"{k}: {saved[k]!r} -> {config.to_dict()[k]!r}" for k in changed)
        raise ModelSpecError(f"cannot resume '{out_dir}' with a different config ({diff}); only --epochs, "
                             "checkpointing, validation, cache and precision may change: drop those flags, "
                             "or start a new run with --out")
    if tuple(load_labels(out_dir)) != tuple(class_names):
        raise DatasetError(f"cannot resume '{out_dir}': the data's identities differ from its {LABELS_FILE}; "
                           "resume on the same data")
    latest = latest_checkpoint(out_dir)
    if latest is None:
        raise ModelSpecError(f"nothing to resume in '{out_dir}': no {CHECKPOINT_DIR}/epoch-*.keras yet; "
                             "start the run again with --out")
    position, path = latest
    if position.step(steps) >= config.epochs * steps:
        raise ModelSpecError(f"run '{out_dir}' has already trained {position.epochs} of {config.epochs} epochs: "
                             f"pass --epochs greater than {position.epochs} to train on")
    return position, path, is_mixed_checkpoint(path)


def _mixed_precision(config: TrainConfig, checkpoint: tuple[Position, Path, bool] | None) -> bool:
    """Resolve `config.mixed_precision`; a resumed run keeps its checkpoint's (its optimizer is loss-scaled or not)."""
    if checkpoint is None:
        return use_mixed_precision(config.mixed_precision)
    mixed = checkpoint[2]
    if config.mixed_precision != "auto" and (config.mixed_precision == "on") != mixed:
        raise ModelSpecError(f"checkpoint '{checkpoint[1]}' was trained with mixed precision "
                             f"{'on' if mixed else 'off'}; resume it with --mixed-precision auto (or "
                             f"{'on' if mixed else 'off'})")
    return mixed


def _trim_log(path: Path, epochs: int) -> None:
    """Drop the rows of epochs from `epochs` (0-based) on: a resume logs them again."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [row for row in rows[1:] if row and int(row[0]) < epochs]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)


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


def _validation_pairs(inputs: _Inputs, config: TrainConfig
                      ) -> tuple[tf.data.Dataset, np.ndarray, np.ndarray, int | np.ndarray] | None:
    """`(images, pairs, same, folds)` for `PairVerification`: a pair file's, else pairs of held-out images."""
    if config.val_pair_file:
        pair_list = read_pairs(config.val_pair_file)
        paths = locate_images(pair_list, config.val_image_root)
        unreadable = find_unreadable(paths)
        if unreadable:
            raise DatasetError(f"{len(unreadable)} pair image(s) cannot be decoded, e.g. {', '.join(unreadable[:3])}")
        log.info("pair verification on %s: %d pairs of %d images", config.val_pair_file, len(pair_list.same),
                 len(paths))
        folds = pair_list.folds if pair_list.folds is not None else 10
        return make_image_dataset(paths, config), pair_list.pairs, pair_list.same, folds
    if inputs.val_images is None:
        log.warning("no pair verification during training: no held-out images")
        return None
    try:
        pairs, same = make_pairs(inputs.val_labels, config.val_pairs, config.seed)
    except DatasetError as e:
        log.warning("no pair verification during training: held-out images: %s", e)
        return None
    return inputs.val_images, pairs, same, 10


def _callbacks(out_dir: Path, config: TrainConfig, verification: PairVerification | None, steps: int,
               start_step: int, append_log: bool = False) -> list[keras.callbacks.Callback]:
    # Order matters: each callback sees the logs the ones before it added, and a checkpoint holds
    # the learning rate the schedule set for the next epoch.
    monitor, mode = ("val_pair_acc", "max") if verification else ("loss", "min")
    callbacks = [verification] if verification else []
    return callbacks + [
        learning_rate_callback(config, monitor, mode),
        Checkpointer(out_dir, steps, config.checkpoint_every, config.checkpoint_unit, config.keep_checkpoints,
                     start_step),
        keras.callbacks.CSVLogger(str(out_dir / LOG_CSV), append=append_log),
    ] + _tensorboard(out_dir)


def _tensorboard(out_dir: Path) -> list[keras.callbacks.Callback]:
    # tf.summary needs the `tensorboard` package, which tensorflow-cpu 2.21 no longer pulls in.
    if importlib.util.find_spec("tensorboard") is None:
        log.warning("TensorBoard logs skipped: the `tensorboard` package is not installed; "
                    "log.csv has the same values (pip install tensorboard for logs/)")
        return []
    return [keras.callbacks.TensorBoard(str(out_dir / TENSORBOARD_DIR), write_graph=False, profile_batch=0)]
