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

    report = progress or first_use_progress()
    try:
        return install_dlib_resnet(progress=report, keras=False)  # first use never imports TensorFlow
    except ModelSpecError as e:
        raise ModelSpecError(f"no model given and the default model '{MODEL_NAME}' is not installed: {e}") from e
    finally:
        getattr(report, "close", lambda: None)()


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


def first_use_progress() -> Progress:
    """The default model's conversion on first use, as one line on stderr: what, where, then 'done (1.2 s)'."""
    from facesearch.embedder.dlib.models import MODEL_NAME, model_dir

    started = time.perf_counter()
    state = {"open": False}

    def report(step: str, done: int, total: int) -> None:
        if not state["open"]:
            print(f"converting the default model ({MODEL_NAME}) from dlib's weights into {model_dir()}, once ...",
                  end="", file=sys.stderr, flush=True)
            state["open"] = True
        if step.startswith("waiting"):
            print(f" {step} ...", end="", file=sys.stderr, flush=True)
        elif done == total:
            print(f" done ({time.perf_counter() - started:.1f} s)", file=sys.stderr, flush=True)
            state["open"] = False

    def close() -> None:  # a conversion that failed midway: end the line before the error is printed
        if state["open"]:
            print(file=sys.stderr, flush=True)
            state["open"] = False

    report.close = close  # type: ignore[attr-defined]
    return report


def recorded_model(index_dir: Path) -> Path | None:
    """The model folder an existing index was built with, or None when there is no index there yet."""
    from facesearch.index import read_manifest
    from facesearch.index.storage.manifest import MANIFEST_FILE

    if not (Path(index_dir) / MANIFEST_FILE).is_file():
        return None
    return Path(read_manifest(index_dir).model_dir)


def model_for_vectors(model: str | os.PathLike | None, shards: Path) -> Path | None:
    """The model folder an index filled from embedding shards records (where a photo search finds its
    model): `model`, else $FACESEARCH_MODEL, else the installed default model, whichever made the
    vectors; None keeps the index's (or records the shard folder, whose card says which model to pass)."""
    from facesearch.embedder.core.environment import model_from_environment
    from facesearch.embedder.core.model_card import ModelCard
    from facesearch.embedder.dlib.models import installed_model_dir

    if model is not None:
        return Path(model)
    try:
        shard_card = ModelCard.load(shards)
    except ModelSpecError:
        return None  # not a shard folder: the ingest says so, with what to do
    for candidate in (model_from_environment(), installed_model_dir()):
        try:
            if candidate is not None and ModelCard.load(candidate).same_model(shard_card):
                return candidate
        except ModelSpecError:
            continue
    return None


def card_for_vectors(model: str | os.PathLike | None, gallery):
    """The card whose thresholds answer ready-made vectors: `model`'s or $FACESEARCH_MODEL's, else the
    index's model folder's (as a photo search would use), else the index's own copy."""
    from facesearch.embedder.core.environment import model_from_environment
    from facesearch.embedder.core.model_card import ModelCard

    chosen = model if model is not None else model_from_environment()
    if chosen is not None:
        return ModelCard.load(chosen)
    if gallery.model_dir.is_dir():
        return ModelCard.load(gallery.model_dir)
    return gallery.card
