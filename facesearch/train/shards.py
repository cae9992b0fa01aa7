"""Per-identity TFRecord shards: one file per label, read back in blocks of two images of one identity."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from facesearch.embedder.core.atomic import atomic_path, atomic_write_json
from facesearch.embedder.core.errors import DatasetError, ModelSpecError
from facesearch.train.config import TrainConfig
from facesearch.train.data import (
    LABELS_FILE,
    FolderDataset,
    find_unreadable,
    load_labels,
    prepare_image,
    save_labels,
    split_holdout,
)
from facesearch.train.mobilefacenet import IMAGE_INPUT
from facesearch.train.models import LABEL_INPUT

SHARDS_FILE = "shards.json"
VAL_FILE = "val.tfrecord"
# Images of one identity shuffled within its shard; CASIA has at most ~800 per identity.
SHARD_SHUFFLE = 1024

_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


@dataclass(frozen=True)
class ShardSet:
    """A folder written by `write_shards`.

    Attributes:
        files: `C'` shard paths, one per label with training images.
        counts: `(C',)` images in each shard.
        class_names: `C` names; label `i` is `class_names[i]`.
        val_file: the held-out images (all labels, in a fixed order), or None if none were held out.
        num_val: images in `val_file`.
        skipped: unreadable files left out when the shards were written.
    """

    files: tuple[str, ...]
    counts: np.ndarray
    class_names: tuple[str, ...]
    val_file: str | None
    num_val: int
    skipped: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def pair_counts(self) -> np.ndarray:
        """Images drawn from each shard per epoch: its count rounded up to even, so blocks of two align."""
        return self.counts + self.counts % 2


def is_shard_folder(path: str | os.PathLike) -> bool:
    """True if `path` holds a `shards.json` written by `write_shards`."""
    return (Path(path) / SHARDS_FILE).is_file()


def write_shards(data: FolderDataset, out_dir: str | os.PathLike, *, val_fraction: float = 0.05, seed: int = 0,
                 progress: Callable[[str, int, int], None] | None = None) -> ShardSet:
    """Write one TFRecord per label (`shard-NNNNN.tfrecord`) and the held-out images (`val.tfrecord`).

    Each record holds the image file's encoded bytes (not decoded pixels: the shards stay the size
    of the dataset) and its dense label. Unreadable images are left out and listed in `shards.json`,
    which is written last, so a folder without it is incomplete. Each file is written atomically.

    Args:
        data: the dataset (`scan_training_folder` or `listfile.parse_list_file`).
        out_dir: the shard folder (created).
        val_fraction: share of each identity held out (seeded, `data.split_holdout`).
        seed: seed of the hold-out choice.
        progress: called as `progress("writing shards", done_images, total_images)`.

    Returns:
        The `ShardSet` written.

    Raises:
        DatasetError: no readable image.
    """
    out_dir = Path(out_dir)
    skipped = find_unreadable(data.paths)
    if skipped:
        bad = set(skipped)
        data = data.subset(np.array([i for i, p in enumerate(data.paths) if p not in bad], dtype=np.int64))
    if not data.paths:
        raise DatasetError(f"no readable image to write into shards ({len(skipped)} unreadable)")
    train_idx, val_idx = split_holdout(data.labels, val_fraction, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    done, total = 0, len(data.paths)
    shards = []
    for label in range(data.num_classes):
        members = train_idx[data.labels[train_idx] == label]
        if members.size:
            name = f"shard-{label:05d}.tfrecord"
            _write_records(out_dir / name, data, members)
            shards.append({"file": name, "label": label, "count": int(members.size)})
        done += members.size
        if progress:
            progress("writing shards", done, total)
    if val_idx.size:
        _write_records(out_dir / VAL_FILE, data, val_idx)
    if progress:
        progress("writing shards", total, total)
    save_labels(out_dir / LABELS_FILE, data.class_names)
    atomic_write_json(out_dir / SHARDS_FILE, {
        "shards": shards, "num_classes": data.num_classes, "num_train": int(train_idx.size),
        "val_file": VAL_FILE if val_idx.size else None, "num_val": int(val_idx.size),
        "val_fraction": val_fraction, "seed": seed, "skipped": list(skipped),
    })
    return load_shards(out_dir)


def _write_records(path: Path, data: FolderDataset, indices: np.ndarray) -> None:
    with atomic_path(path) as tmp, tf.io.TFRecordWriter(str(tmp)) as writer:
        for i in indices:
            example = tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[Path(data.paths[i]).read_bytes()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(data.labels[i])])),
            }))
            writer.write(example.SerializeToString())


def load_shards(shard_dir: str | os.PathLike) -> ShardSet:
    """Read a shard folder's `shards.json` and `labels.json`.

    Raises:
        DatasetError: the folder has no (or a malformed) `shards.json`.
    """
    root = Path(shard_dir)
    try:
        manifest = json.loads((root / SHARDS_FILE).read_text())
        files = tuple(str(root / s["file"]) for s in manifest["shards"])
        counts = np.asarray([int(s["count"]) for s in manifest["shards"]], np.int64)
        val_file = str(root / manifest["val_file"]) if manifest["val_file"] else None
        num_val, skipped = int(manifest["num_val"]), tuple(manifest.get("skipped", ()))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DatasetError(f"'{root}' is not a complete shard folder ({e}); write it with `facesearch prepare`") from e
    return ShardSet(files, counts, tuple(load_labels(root)), val_file, num_val, skipped)


def make_shard_train_dataset(shards: ShardSet, config: TrainConfig, skip_batches: int = 0) -> tf.data.Dataset:
    """Endless batches from the shards in which images come in pairs of one identity.

    Shards are visited in a seeded shuffled order; `interleave(block_length=2)` takes two images at
    a time from each open shard, and every shard yields an even number of images per visit (an odd
    one repeats an image), so elements `2k` and `2k + 1` always share a label and an even batch
    holds `batch_size / 2` same-identity pairs. Decoding, resizing, flips and normalisation are as
    `data.make_train_dataset`.

    Args:
        shards: from `load_shards`.
        config: input size, (even) batch size, flip and seed.
        skip_batches: start this many batches into the stream (resume); skipped images are not decoded.

    Returns:
        Dataset of `({"image": (b, H, W, 3) float32, "label": (b, C) float32}, (b, C) float32)`, endless.

    Raises:
        ModelSpecError: odd batch size.
    """
    check_pair_batch(config)
    depth, seed = shards.num_classes, config.seed
    files = tf.data.Dataset.from_tensor_slices((list(shards.files), shards.pair_counts))
    files = files.shuffle(len(shards.files), seed=seed, reshuffle_each_iteration=True).repeat()

    def visit(file, count):
        return tf.data.TFRecordDataset(file).shuffle(SHARD_SHUFFLE, seed=seed).repeat().take(count)

    records = files.interleave(visit, cycle_length=max(1, min(config.batch_size // 2, len(shards.files))),
                               block_length=2, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    records = tf.data.Dataset.zip(records, seeds).skip(skip_batches * config.batch_size)

    def load(record, flip_seed):
        example = tf.io.parse_single_example(record, _FEATURES)
        image = _prepare(example["image"], config)
        if config.flip:
            image = tf.image.stateless_random_flip_left_right(image, flip_seed)
        one_hot = tf.one_hot(example["label"], depth, dtype=tf.float32)
        return {IMAGE_INPUT: image, LABEL_INPUT: one_hot}, one_hot

    ds = records.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)


def check_pair_batch(config: TrainConfig) -> None:
    """Raise `ModelSpecError` unless the batch size is even (whole same-identity pairs per batch)."""
    if config.batch_size % 2:
        raise ModelSpecError(f"training from shards pairs images two by two: batch_size must be even, "
                             f"got {config.batch_size}")


def read_val_shard(shards: ShardSet, config: TrainConfig) -> tuple[tf.data.Dataset, np.ndarray]:
    """The held-out images in file order, unaugmented, and their labels.

    Returns:
        `(images, labels)`: dataset of `(b, H, W, 3)` float32 batches and `(n,)` int32 labels.
    """
    assert shards.val_file is not None
    parsed = tf.data.TFRecordDataset(shards.val_file).map(lambda r: tf.io.parse_single_example(r, _FEATURES))
    labels = np.fromiter((int(e["label"]) for e in parsed.as_numpy_iterator()), np.int32)
    images = parsed.map(lambda e: _prepare(e["image"], config), num_parallel_calls=tf.data.AUTOTUNE)
    return images.batch(config.batch_size).prefetch(tf.data.AUTOTUNE), labels


def _prepare(encoded: tf.Tensor, config: TrainConfig) -> tf.Tensor:
    return prepare_image(tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False), config)
