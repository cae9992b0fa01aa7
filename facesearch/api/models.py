"""Which model a call uses, decided in one place for the API, the CLI and the service.

The order: the model given, else $FACESEARCH_MODEL, else the one the index recorded, else the
default model (dlib-resnet-v1), converted into the cache at first use (about 2 s, numpy and onnx
only; `facesearch.embedder.dlib.install`); an installed model is found by reading its card.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from facesearch.embedder.core.errors import ModelSpecError

Progress = Callable[[str, int, int], None]


def resolve_model(model: str | os.PathLike | None, recorded: Path | None = None, *,
                  progress: Progress | None = None) -> Path:
    """The model folder to use (see the module docstring).

    Args:
        model: a model folder (`facesearch export`), or None.
        recorded: the model folder an index was built with, or None.
        progress: told each step of a first-use conversion of the default model (default: lines on stderr).

    Raises:
        ModelSpecError: the index's recorded model is gone, or the default model is not installed and
            cannot be converted here.
    """
    from facesearch.embedder.core.environment import model_from_environment
    from facesearch.embedder.dlib.models import MODEL_NAME, installed_model_dir

    if model is not None:
        return Path(model)
    if (from_env := model_from_environment()) is not None:
        return from_env
    if recorded is not None:
        if not recorded.is_dir():
            raise ModelSpecError(f"the model this index was built with ('{recorded}') is gone: "
                                 "pass --model (model=) with the same model, or rebuild the index")
        return recorded
    if (installed := installed_model_dir()) is not None:
        return installed
    from facesearch.embedder.dlib.install import install_dlib_resnet

    try:
        return install_dlib_resnet(progress=progress or stderr_progress())
    except ModelSpecError as e:
        raise ModelSpecError(f"no model given and the default model '{MODEL_NAME}' is not installed: {e}") from e


def embedder_for(model: str | os.PathLike | None, *, recorded: Path | None = None, aligned: bool = False,
                 min_face_size: int | None = None, face_threshold: float | None = None):
    """The `Embedder` for the resolved model, with these detector options, aligned or not."""
    model_dir = resolve_model(model, recorded).resolve()
    try:
        card = (model_dir / "model_card.json").stat()
        stamp = (card.st_mtime_ns, card.st_size)
    except OSError:
        stamp = None  # the Embedder says what is missing
    return _embedder(model_dir, stamp, aligned, min_face_size, face_threshold)


@functools.lru_cache(maxsize=4)
def _embedder(model_dir: Path, card_stamp, aligned: bool, min_face_size: int | None, face_threshold: float | None):
    # One ONNX session per model and options in a process: a script calling verify() in a loop loads
    # the model once. Keyed by the card file's stamp too: a card calibrated or a model re-exported in
    # place is read again. Embedder is thread-safe (`Embedder.faces`).
    from facesearch.embedder.runtime import Embedder

    return Embedder(model_dir, aligned=aligned or None, detector=detector_config(min_face_size, face_threshold))


def detector_config(min_face_size: int | None, face_threshold: float | None):
    """Detection options with these overrides (None: the detector's defaults)."""
    import dataclasses

    from facesearch.embedder.detect import DetectorConfig

    changes = {"min_face_size": min_face_size, "score_threshold": face_threshold}
    return dataclasses.replace(DetectorConfig(), **{k: v for k, v in changes.items() if v is not None})


def stderr_progress() -> Progress:
    """A progress callback for the default model's conversion: one line per step on stderr, with the time."""
    started = time.perf_counter()

    def report(step: str, done: int, total: int) -> None:
        print(f"[{done}/{total}] {step} ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    return report
