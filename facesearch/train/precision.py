"""Mixed precision: deciding on it, the Keras policy around a run, and telling a checkpoint's precision."""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Iterator

import keras

from facesearch.embedder.core.errors import ModelSpecError

MIXED_POLICY = "mixed_float16"


def use_mixed_precision(mode: str) -> bool:
    """Resolve `TrainConfig.mixed_precision`: "on", "off", or "auto" (on when TensorFlow sees a GPU)."""
    if mode == "auto":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return mode == "on"


@contextlib.contextmanager
def precision_policy(mixed: bool) -> Iterator[None]:
    """Set Keras' global dtype policy (`mixed_float16` or `float32`) inside, restore the previous one after.

    Layers take the global policy when they are built or loaded, and `compile` wraps the
    optimizer in a `LossScaleOptimizer` when the model's policy is `mixed_float16`, so both
    building and loading a training model happen inside.
    """
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(MIXED_POLICY if mixed else "float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def is_mixed_checkpoint(path: str | os.PathLike) -> bool:
    """True if a `.keras` file was saved from a model with `mixed_float16` layers.

    Raises:
        ModelSpecError: the file is not a `.keras` archive.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            return MIXED_POLICY.encode() in archive.read("config.json")
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise ModelSpecError(f"cannot load Keras model '{path}': {e}") from e
