"""One set of weights, two views: the ArcFace training model and the image -> embedding model."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import keras

from facesearch.embedder.core.errors import ModelSpecError
from facesearch.train.arcface import ArcFace
from facesearch.train.checkpoints import CHECKPOINT_DIR, latest_checkpoint
from facesearch.train.config import TrainConfig
from facesearch.train.mobilefacenet import EMBEDDING_LAYER, IMAGE_INPUT, mobilefacenet, weight_decay_regularizer

LABEL_INPUT = "label"
LOGITS_LAYER = "arcface"
PROBABILITIES_LAYER = "probabilities"
MODEL_FILE = "model.keras"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Views:
    """Two functional models over the same layers (training one updates the other).

    Attributes:
        train_model: inputs `image` `(n, H, W, 3)` float32 and `label` `(n, C)` one-hot
            -> `(n, C)` class probabilities through the ArcFace head.
        embedding_model: input `image` -> `(n, d)` embeddings (not normalised), the
            validation / inference / export view.
    """

    train_model: keras.Model
    embedding_model: keras.Model


def build_views(config: TrainConfig, num_classes: int) -> Views:
    """Build MobileFaceNet + ArcFace as a training view and an embedding view.

    Args:
        config: backbone and head settings.
        num_classes: C, the number of training labels.

    Returns:
        `Views` sharing every backbone layer.

    Raises:
        ModelSpecError: `num_classes` < 1.
    """
    if num_classes < 1:
        raise ModelSpecError(f"need at least one class to build the ArcFace head, got {num_classes}")
    image = keras.Input((config.input_height, config.input_width, 3), dtype="float32", name=IMAGE_INPUT)
    label = keras.Input((num_classes,), dtype="float32", name=LABEL_INPUT)
    embedding = mobilefacenet(image, config)
    # float32 whatever the global policy: under mixed_float16 the backbone computes in float16, but
    # cos(theta + m) near 1, the scaled logits, the softmax and the loss need float32's range and precision.
    head = ArcFace(num_classes, scale=config.arcface_scale, margin=config.arcface_margin,
                   kernel_regularizer=weight_decay_regularizer(config.head_weight_decay), name=LOGITS_LAYER,
                   dtype="float32")
    logits = head([embedding, label])
    # The loss still sees the logits: Keras' cross-entropy reads them back from a Softmax output.
    probabilities = keras.layers.Softmax(name=PROBABILITIES_LAYER, dtype="float32")(logits)
    train_model = keras.Model({IMAGE_INPUT: image, LABEL_INPUT: label}, probabilities, name=f"{config.name}_arcface")
    return Views(train_model=train_model, embedding_model=keras.Model(image, embedding, name=config.name))


def embedding_view(model: keras.Model) -> keras.Model:
    """Truncate a model to its `image` input and the layer named `embedding`.

    Works on a training model built by `build_views` or loaded from a `.keras` file; the
    returned model shares the given model's weights.

    Args:
        model: a functional model with an input named `image` and a layer named `embedding`.

    Returns:
        A model `(n, H, W, 3)` float32 -> `(n, d)`.

    Raises:
        ModelSpecError: the model has no such input or layer.
    """
    try:
        image = model.get_layer(IMAGE_INPUT).output
        embedding = model.get_layer(EMBEDDING_LAYER).output
    except (ValueError, AttributeError) as e:
        raise ModelSpecError(
            f"model '{model.name}' has no input '{IMAGE_INPUT}' and layer '{EMBEDDING_LAYER}' "
            f"({e}); was it built by facesearch.train.models.build_views?"
        ) from e
    return keras.Model(image, embedding, name=f"{model.name}_embedding")


def load_checkpoint(path: str | os.PathLike, *, as_saved: bool = False) -> keras.Model:
    """Load a training or embedding model saved by `facesearch.train.fit`.

    A model trained under mixed precision (float16 compute) comes back as a float32 copy with the
    same weights, uncompiled: inference and export always compute in float32.

    Args:
        path: a `.keras` file, or a run folder: its `model.keras`, else its latest checkpoint
            (`checkpoints/epoch-NNN[-batch-NNNNNN].keras`, a run that was interrupted).
        as_saved: load a mixed-precision model as it was saved, compiled with its loss-scaled
            optimizer (to resume it); call it under `train.precision.precision_policy(True)`.

    Returns:
        The loaded (compiled, if it was saved compiled) Keras model.

    Raises:
        ModelSpecError: nothing to load at `path`, or the file is not a loadable Keras model.
    """
    from facesearch.train.precision import is_mixed_checkpoint, precision_policy

    file = _resolve_checkpoint(Path(path))
    mixed = is_mixed_checkpoint(file)
    try:
        if as_saved or not mixed:
            return keras.saving.load_model(file, custom_objects={"ArcFace": ArcFace})
        with precision_policy(False):
            return float32_copy(keras.saving.load_model(file, custom_objects={"ArcFace": ArcFace}, compile=False))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ModelSpecError(f"cannot load Keras model '{file}': {e}") from e


def float32_copy(model: keras.Model) -> keras.Model:
    """The same functional model and weights with every layer computing in float32 (uncompiled)."""

    def clone(layer):
        config = layer.get_config()
        config["dtype"] = "float32"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _resolve_checkpoint(path: Path) -> Path:
    if path.is_file():
        if path.suffix != ".keras":
            raise ModelSpecError(f"'{path}' is not a .keras file; pass a run folder or a .keras checkpoint")
        return path
    if path.is_dir():
        if (path / MODEL_FILE).is_file():
            return path / MODEL_FILE
        latest = latest_checkpoint(path)
        if latest:
            return latest[1]
        raise ModelSpecError(
            f"run folder '{path}' holds no {MODEL_FILE} and no {CHECKPOINT_DIR}/epoch-*.keras; "
            "is it a folder made by `facesearch train`?"
        )
    raise ModelSpecError(f"no model at '{path}': pass a .keras file or a training run folder")


def transfer_weights(target: keras.Model, source: keras.Model) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Copy weights layer by layer, matched by layer name, skipping layers whose shapes differ.

    Used to start training from a pretrained model (`--init-weights`): e.g. a backbone trained
    with another number of classes loads every layer but the ArcFace head.

    Args:
        target: the model to fill in place.
        source: a model with (some of) the same layer names.

    Returns:
        `(loaded, skipped)`: names of the target's layers with weights that were copied, and of
        those left as they were (absent from `source`, or with different weight shapes).
    """
    by_name = {layer.name: layer for layer in source.layers}
    loaded, skipped = [], []
    for layer in target.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        match = by_name.get(layer.name)
        if match is None:
            skipped.append(layer.name)
            log.info("init weights: layer '%s' is not in the source model; left as built", layer.name)
            continue
        source_weights = match.get_weights()
        shapes, source_shapes = [w.shape for w in weights], [w.shape for w in source_weights]
        if shapes != source_shapes:
            skipped.append(layer.name)
            log.info("init weights: layer '%s' has shapes %s here, %s in the source; left as built",
                     layer.name, shapes, source_shapes)
            continue
        layer.set_weights(source_weights)
        loaded.append(layer.name)
    return tuple(loaded), tuple(skipped)


def load_embedding_model(checkpoint: str | os.PathLike) -> tuple[keras.Model, TrainConfig | None]:
    """Load a checkpoint and truncate it to its embedding model, for `facesearch.embedder.export.export_model`.

    Args:
        checkpoint: a `.keras` file, or a run folder (its `model.keras`, else its latest
            `checkpoints/epoch-NNN.keras`, plus `config.json`).

    Returns:
        (Keras model `image` (None, H, W, 3) -> `embedding` (None, D) sharing the checkpoint's
        weights; the run's `TrainConfig`, or None for a `.keras` file outside a run folder).

    Raises:
        ModelSpecError: nothing loadable at `checkpoint`, no `image` input / `embedding` layer,
            or a `config.json` that disagrees with the model's input size.
    """
    from facesearch.train.config import CONFIG_FILE

    path = Path(checkpoint)
    model = embedding_view(load_checkpoint(path))
    run_dir = path if path.is_dir() else path.parent
    config = TrainConfig.load(run_dir) if (run_dir / CONFIG_FILE).is_file() else None
    _, height, width, _ = model.input_shape
    if config is not None and (config.input_height, config.input_width) != (height, width):
        raise ModelSpecError(
            f"'{run_dir / CONFIG_FILE}' says {config.input_height}x{config.input_width} but the model in "
            f"'{checkpoint}' takes {height}x{width}; pass the .keras file of the run it belongs to"
        )
    return model, config
