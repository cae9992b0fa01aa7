"""Where the default model (dlib's ResNet, converted) lives in the cache, found without TensorFlow.

Converting it is `facesearch.embedder.dlib.install` (core dependencies only); finding it reads one model card.
"""

from __future__ import annotations

from pathlib import Path

from facesearch.embedder.core.environment import cache_dir
from facesearch.embedder.core.errors import ModelSpecError
from facesearch.embedder.core.model_card import ModelCard

MODEL_NAME = "dlib-resnet-v1"
ALIASES = ("dlib-resnet", MODEL_NAME)


def model_dir(name: str = MODEL_NAME) -> Path:
    """Where model `name` is (or would be) installed: <cache>/models/<name>."""
    return cache_dir() / "models" / canonical_name(name)


def canonical_name(name: str) -> str:
    """`dlib-resnet` and `dlib-resnet-v1` both name the default model.

    Raises:
        ModelSpecError: an unknown model name.
    """
    if name not in ALIASES:
        raise ModelSpecError(f"unknown model '{name}': installable models are {list(ALIASES)}")
    return MODEL_NAME


def installed_model_dir(name: str = MODEL_NAME) -> Path | None:
    """The folder of an installed model, or None when it is not installed (cheap: reads one card)."""
    folder = model_dir(name)
    try:
        card = ModelCard.load(folder)
    except ModelSpecError:
        return None
    return folder if card.name == MODEL_NAME and (folder / card.onnx_file).is_file() else None
