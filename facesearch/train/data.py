"""Folder datasets (`DATA/<identity>/*.jpg|png`) and their tf.data input pipelines."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from facesearch.embedder.core.atomic import atomic_write_json
from facesearch.embedder.core.constants import IMAGE_EXTENSIONS, PIXEL_MEAN, PIXEL_STD
from facesearch.embedder.core.errors import DatasetError
from facesearch.train.config import TrainConfig
from facesearch.train.mobilefacenet import IMAGE_INPUT
from facesearch.train.models import LABEL_INPUT

# The photo types TensorFlow's decode_image reads, out of those facesearch reads elsewhere.
TRAINING_EXTENSIONS = tuple(sorted(IMAGE_EXTENSIONS & {".jpg", ".jpeg", ".png", ".bmp", ".gif"}))
LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class FolderDataset:
    """Image paths with dense labels.

    Attributes:
        paths: `n` image paths, sorted by class name, then by file name.
        labels: `(n,)` int32 labels in `0..C-1`.
        class_names: `C` folder names, sorted; label `i` is `class_names[i]`.
    """

    paths: tuple[str, ...]
    labels: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: np.ndarray) -> FolderDataset:
        """The images at `indices` (int array), keeping every class name and label."""
        return FolderDataset(tuple(self.paths[i] for i in indices), self.labels[indices], self.class_names)


def scan_training_folder(data_dir: str | os.PathLike) -> FolderDataset:
    """List `data_dir/<class>/*.{jpg,jpeg,png,bmp,gif}` with labels from the sorted class names.

    Hidden entries are ignored; a class folder with no images is left out (no empty classes).

    Args:
        data_dir: folder with one sub-folder of images per class.

    Returns:
        The dataset, in a stable order.

    Raises:
        DatasetError: `data_dir` is missing or holds no class folder with an image.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DatasetError(f"dataset folder '{root}' does not exist; expected DATA/<identity>/*.jpg|png")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DatasetError(f"dataset folder '{root}' has no identity sub-folders; expected DATA/<identity>/*.jpg|png")
    paths, labels, names = [], [], []
    for folder in folders:
        images = sorted(p for p in folder.iterdir()
                        if p.suffix.lower() in TRAINING_EXTENSIONS and not p.name.startswith("."))
        if images:
            paths += [str(p) for p in images]
            labels += [len(names)] * len(images)
            names.append(folder.name)
    if not paths:
        raise DatasetError(
            f"dataset folder '{root}' has {len(folders)} identity folders but no images ({', '.join(TRAINING_EXTENSIONS)})"
        )
    return FolderDataset(tuple(paths), np.asarray(labels, np.int32), tuple(names))


def save_labels(path: str | os.PathLike, class_names: tuple[str, ...] | list[str]) -> Path:
    """Write the label mapping as JSON atomically: `{"class_names": [...], "num_classes": C}`.

    Label `i` is `class_names[i]`. A folder gets `labels.json` inside it.

    Returns:
        The path written.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LABELS_FILE
    atomic_write_json(path, {"class_names": list(class_names), "num_classes": len(class_names)})
    return path


def load_labels(path: str | os.PathLike) -> list[str]:
    """Read the class names (index = label) from `labels.json` or a run folder holding it.

    Raises:
        DatasetError: the file is missing or malformed.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LABELS_FILE
    try:
        names = json.loads(path.read_text())["class_names"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise DatasetError(f"cannot read label mapping '{path}': {e}") from e
    return [str(n) for n in names]


def split_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out a seeded fraction of each class's images, keeping at least one for training.

    Args:
        labels: `(n,)` int labels.
        fraction: share of each class to hold out, rounded down; classes of one image give none.
        seed: seed of the choice.

    Returns:
        `(train_indices, holdout_indices)`: sorted int64 arrays that partition `0..n-1`.
    """
    rng = np.random.default_rng(seed)
    holdout = []
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        count = min(math.floor(fraction * members.size + 1e-9), members.size - 1)  # 0.29 * 100 is 28.999...
        holdout.append(rng.choice(members, size=count, replace=False))
    held = np.sort(np.concatenate(holdout)).astype(np.int64)
    return np.setdiff1d(np.arange(len(labels)), held).astype(np.int64), held


def find_unreadable(paths: tuple[str, ...] | list[str]) -> list[str]:
    """The files TensorFlow cannot decode as images, found in one parallel pass.

    Args:
        paths: image files.

    Returns:
        The unreadable paths, in input order.
    """
    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), list(paths)))
    ds = ds.map(lambda i, p: (i, tf.shape(_decode(p))[0]), num_parallel_calls=tf.data.AUTOTUNE)
    readable = set()
    for indices, _ in ds.ignore_errors().batch(1024).as_numpy_iterator():
        readable.update(indices.tolist())
    return [p for i, p in enumerate(paths) if i not in readable]


def _decode(path: tf.Tensor) -> tf.Tensor:
    # dtype=uint8 also scales 16-bit PNGs to 0..255.
    return tf.io.decode_image(tf.io.read_file(path), channels=3, dtype=tf.uint8, expand_animations=False)


def decode_training_image(path: tf.Tensor, config: TrainConfig) -> tf.Tensor:
    """Decode one image file and prepare it as model input (`prepare_image`).

    Args:
        path: scalar string tensor.
        config: gives the model input size.
    """
    return prepare_image(_decode(path), config)


def prepare_image(image: tf.Tensor, config: TrainConfig) -> tf.Tensor:
    """A decoded `(h, w, 3)` uint8 image as model input.

    Returns:
        `(H, W, 3)` float32, resized (bilinear) and normalised `(x - PIXEL_MEAN) / PIXEL_STD`.
    """
    image = tf.image.resize(tf.cast(image, tf.float32), (config.input_height, config.input_width))
    image.set_shape((config.input_height, config.input_width, 3))
    return (image - PIXEL_MEAN) / PIXEL_STD


def make_train_dataset(data: FolderDataset, config: TrainConfig, skip_batches: int = 0) -> tf.data.Dataset:
    """Endless shuffled, flipped batches of `({"image", "label"}, one-hot label)` for the train view.

    Unreadable images are skipped with a TensorFlow warning (`fit.train` drops them up front with
    `find_unreadable`, so this is a backstop). Shuffling and flips are seeded
    by `config.seed` and differ from epoch to epoch.

    With `config.cache` ("memory" or a file path), images are decoded and resized once, in file
    order, and cached before the shuffle and the flips (which must differ from epoch to epoch).
    The stream is the same as without the cache: the shuffle draws its permutation from the seed
    and the element count alone. The shuffle buffer then holds decoded images: a whole epoch,
    `H * W * 3 * 4` bytes each (129 KB at 112x96), on top of a memory cache.

    Args:
        data: the training images.
        config: input size, batch size, flip, seed and cache.
        skip_batches: start this many batches into the stream (a resumed run picks up where the
            interrupted one stopped); without a cache, the skipped images are not read.

    Returns:
        Dataset of `({"image": (b, H, W, 3) float32, "label": (b, C) float32}, (b, C) float32)`;
        repeat forever, so pass `steps_per_epoch` to `fit`.
    """
    depth = data.num_classes
    ds = tf.data.Dataset.from_tensor_slices((list(data.paths), data.labels))
    if config.cache:
        ds = ds.map(lambda path, label: (decode_training_image(path, config), label), num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.ignore_errors(log_warning=True).cache("" if config.cache == "memory" else config.cache)
    ds = ds.shuffle(len(data.paths), seed=config.seed, reshuffle_each_iteration=True).repeat()
    # One stateless seed per element: flips are reproducible however the map is parallelised.
    seeds = tf.data.Dataset.random(seed=config.seed, rerandomize_each_iteration=True).batch(2)
    # Skipped before the map: only paths and seeds are drawn, no image is decoded.
    ds = tf.data.Dataset.zip(ds, seeds).skip(skip_batches * config.batch_size)

    def load(item, seed):
        source, label = item
        image = source if config.cache else decode_training_image(source, config)
        if config.flip:
            image = tf.image.stateless_random_flip_left_right(image, seed)
        one_hot = tf.one_hot(label, depth, dtype=tf.float32)
        return {IMAGE_INPUT: image, LABEL_INPUT: one_hot}, one_hot

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors(log_warning=True)
    return ds.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)


def make_image_dataset(paths: tuple[str, ...] | list[str], config: TrainConfig,
                       batch_size: int | None = None) -> tf.data.Dataset:
    """Batches of images in the given order, without augmentation, for embedding.

    Args:
        paths: image files.
        config: input size and (default) batch size.
        batch_size: overrides `config.batch_size`.

    Returns:
        Dataset of `(b, H, W, 3)` float32; an unreadable image fails the iteration
        (`tf.errors.InvalidArgumentError`), as every image must get an embedding.
    """
    ds = tf.data.Dataset.from_tensor_slices(list(paths))
    ds = ds.map(lambda p: decode_training_image(p, config), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size or config.batch_size).prefetch(tf.data.AUTOTUNE)
