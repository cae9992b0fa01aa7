"""The default model: dlib's face-recognition ResNet, converted once into the user's cache.

`install_dlib_resnet` reads the weight file of the `face-recognition-models` package (CC0 1.0),
checks its sha256, builds the Keras model (`facesearch.embedder.dlib.keras_net`) and sends it through
`facesearch.embedder.export.export_model` like any trained checkpoint: SavedModel + ONNX + model card, with
the export's parity proof. Finding an installed model is `facesearch.embedder.dlib.models` (no TensorFlow);
only this conversion needs the [train] extra.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from facesearch.embedder.core.errors import ModelSpecError
from facesearch.embedder.core.model_card import sha256_file
from facesearch.embedder.dlib.chip import ALIGNMENT_TEMPLATE
from facesearch.embedder.dlib.models import MODEL_NAME, installed_model_dir, model_dir

STD = 256.0  # dlib's input layer divides by 256 after subtracting its channel means
# Score thresholds between L2-normalised dlib descriptors, in place of dlib's own rule (L2 distance
# < 0.6 between raw descriptors), as `facesearch eval lfw --calibrate` would store them: measured
# through facesearch's own detector and aligner (MTCNN, then dlib's 5-point predictor and chip,
# facesearch.embedder.dlib.landmarks) on LFW's view-1 training pairs (pairsDevTrain.txt, LFW's
# model-development view; accuracy is reported on view 2, pairs.txt). best_accuracy: the most
# accurate threshold (98.4% on those 2,200 pairs); far_1e-3: the lowest score that lets at most
# 1 in 1,000 different-person pairs through (TAR 0.92 there), which `query` uses for 'unknown'.
THRESHOLDS = {"best_accuracy": 0.9030, "far_1e-3": 0.9262}

StepProgress = Callable[[str, int, int], None]  # (step name, steps done, total)
INSTALL_STEPS = ("verifying weights", "reading weights", "building Keras model",
                 "exporting SavedModel + ONNX, checking parity", "done")


def install_dlib_resnet(*, force: bool = False, progress: StepProgress | None = None,
                        weights: str | os.PathLike | None = None) -> Path:
    """Convert dlib's ResNet into an exported model folder in the cache (once).

    Args:
        force: convert again even when the model is already installed.
        progress: called as progress(step name, steps done, total steps).
        weights: the .dat file; default the one in the installed `face-recognition-models`.

    Returns:
        The model folder (model.onnx, savedmodel/, model_card.json, export_report.json).

    Raises:
        ModelSpecError: the weight package is missing, the file's checksum or structure is wrong,
            or TensorFlow (the [train] extra) is not installed.
        ExportParityError: the exported model does not reproduce the Keras model.
    """
    out = model_dir()
    if not force and installed_model_dir() is not None:
        return out
    report = progress or (lambda step, done, total: None)
    steps = iter(enumerate(INSTALL_STEPS))

    def step() -> None:
        done, name = next(steps)
        report(name, done, len(INSTALL_STEPS) - 1)

    from facesearch.embedder.dlib.weights import WEIGHTS_SHA256, read_dlib_resnet

    step()
    path = verified_weights(weights)
    step()
    net = read_dlib_resnet(path)
    step()
    try:
        from facesearch.embedder.dlib.keras_net import build_dlib_resnet
        from facesearch.embedder.export import export_model
    except ImportError as e:
        raise ModelSpecError(f"converting the default model needs TensorFlow ({e}): run `facesearch models "
                             "install dlib-resnet` where facesearch is installed with its [train] extra "
                             "(pip install 'facesearch[train]'), or pass --model") from e
    model = build_dlib_resnet(net)
    step()
    export_model(model, out, name=MODEL_NAME, alignment_template=ALIGNMENT_TEMPLATE,
                 mean=net.mean_rgb, std=(STD,) * 3, thresholds=THRESHOLDS,
                 source=f"{path.name} (sha256 {WEIGHTS_SHA256[:12]}), face-recognition-models, CC0 1.0")
    step()
    return out


def verified_weights(weights: str | os.PathLike | None = None) -> Path:
    """The weight file (default: the installed package's), once its sha256 is the recorded one.

    Raises:
        ModelSpecError: no such file, or another sha256.
    """
    from facesearch.embedder.dlib.weights import WEIGHTS_SHA256, find_weights_file

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

