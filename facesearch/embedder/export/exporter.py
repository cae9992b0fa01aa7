"""Export a Keras embedding model to a SavedModel and ONNX, and prove both match Keras.

This module imports TensorFlow; the runtime path (facesearch.embedder.runtime, index, cli query) never imports it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from facesearch.embedder.core.atomic import atomic_write_bytes, atomic_write_json
from facesearch.embedder.core.constants import (
    EMBEDDING_NAME,
    INPUT_NAME,
    PIXEL_MEAN,
    PIXEL_STD,
    TEMPLATE_FOR_INPUT_SIZE,
)
from facesearch.embedder.core.errors import ExportParityError, ModelSpecError
from facesearch.embedder.core.model_card import CARD_FILE, ModelCard, sha256_file

# How PReLUs are written into the ONNX file (facesearch.embedder.export.onnx_prelu): "batchnorm" keeps ONNX
# Runtime's CPU convolutions in their blocked layout from the first to the last; on the exported
# MobileFaceNet it ran 1.8-1.9x as fast as tf2onnx's five ops (benchmarks/export_throughput.py).
# For OpenVINO, "tf2onnx" (or "prelu") is faster: it fuses those PReLUs into the convolutions.
DEFAULT_PRELU_FORM = "batchnorm"

ONNX_FILE = "model.onnx"
SAVEDMODEL_DIR = "savedmodel"
REPORT_FILE = "export_report.json"
# Float32 kernels in different runtimes disagree in the last bits; a real conversion bug (wrong
# layout, a lost BatchNorm, a sign-flipped PReLU slope) costs far more than 1e-5 of cosine.
PARITY_MIN_COSINE = 0.99999


@dataclass(frozen=True)
class ExportReport:
    """What an export measured; saved as `export_report.json` beside the model card.

    Cosines are the minimum over `parity_samples` rows of the row-wise cosine between the
    exported model's embedding and the Keras embedding model's; None for a format not exported.
    `prelu_fused` counts the PReLUs rewritten from tf2onnx's five ops into `prelu_form`
    (facesearch.embedder.export.onnx_prelu).
    """

    name: str
    parity_samples: int
    seed: int
    min_cosine_required: float
    onnx_min_cosine: float | None = None
    onnx_max_abs_diff: float | None = None
    savedmodel_min_cosine: float | None = None
    savedmodel_max_abs_diff: float | None = None
    prelu_fused: int = 0
    prelu_form: str = "tf2onnx"
    opset: int = 17
    seconds: float = 0.0

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> ExportReport:
        """Read the report of the export in `out_dir`."""
        path = Path(out_dir) / REPORT_FILE
        try:
            fields = json.loads(path.read_text())
            # Reports written before `prelu_form` existed: PRelu nodes when any were fused, else five ops.
            fields.setdefault("prelu_form", "prelu" if fields.get("prelu_fused") else "tf2onnx")
            return cls(**fields)
        except (OSError, json.JSONDecodeError, TypeError, AttributeError) as e:
            raise ModelSpecError(f"cannot read export report '{path}': {e}; export the model again") from e


def export_model(
    model,
    out_dir: str | os.PathLike,
    *,
    onnx: bool = True,
    savedmodel: bool = True,
    opset: int = 17,
    name: str | None = None,
    parity_samples: int = 64,
    seed: int = 0,
    alignment_template: str | None = None,
    prelu: str | None = None,
    fuse_prelu: bool = False,
    mean: tuple[float, float, float] = (PIXEL_MEAN,) * 3,
    std: tuple[float, float, float] = (PIXEL_STD,) * 3,
    source: str | None = None,
    thresholds: dict[str, float] | None = None,
) -> ModelCard:
    """Export a Keras embedding model (input `image` -> output `embedding`) and prove parity.

    Writes into `out_dir`: `model.onnx` (dynamic batch axis `batch`), `savedmodel/` (signature
    `serving_default`: `image` (None, H, W, 3) float32 -> `embedding` (None, D)), `model_card.json`
    and `export_report.json`. Everything is built in a hidden folder beside `out_dir` and moved
    into place only once every parity check has passed, so a failed export leaves a previous
    export in `out_dir` untouched.

    Args:
        model: a Keras model `(None, H, W, 3)` float32 -> `(None, D)`, e.g. a training run's
            embedding view (`facesearch.train.models.load_embedding_model`) or the converted dlib ResNet.
        out_dir: the export folder; an existing export there is replaced on success.
        onnx: write `model.onnx`.
        savedmodel: write `savedmodel/`.
        opset: ONNX opset.
        name: model name for the card; default `mfn-<H>x<W>-<first 8 hex of weights_digest>`.
        parity_samples: random inputs in the normalised range compared against Keras.
        seed: seed of those inputs.
        alignment_template: the template the model was trained on; default the one its input
            size implies (`facesearch.embedder.core.constants.TEMPLATE_FOR_INPUT_SIZE`, else `none`).
        prelu: how PReLUs are written, one of `onnx_prelu.PRELU_FORMS`: "batchnorm" (the default,
            `DEFAULT_PRELU_FORM`: fastest in ONNX Runtime on CPU), "prelu" (one `PRelu` node each)
            or "tf2onnx" (tf2onnx's five ops, which OpenVINO fuses best).
        fuse_prelu: the same as `prelu="prelu"` (`facesearch export --fuse-prelu`).
        mean: per-channel (R, G, B) mean the model expects subtracted from its pixels (card and
            parity inputs); default that of `facesearch train`.
        std: per-channel divisor applied after the mean.
        source: what the card names as the model's source (e.g. the checkpoint's path); default
            the Keras model's name.
        thresholds: calibrated score thresholds for the card, when known in advance.

    Returns:
        The model card written to `out_dir`; the measured cosines are in `ExportReport.load(out_dir)`.

    Raises:
        ModelSpecError: `out_dir` exists and is not an export folder.
        ExportParityError: an exported model's embeddings differ from Keras's (cosine < 0.99999).
    """
    if not (onnx or savedmodel):
        raise ValueError("nothing to export: onnx and savedmodel are both False")
    if parity_samples < 1:
        raise ValueError(f"parity_samples must be >= 1, got {parity_samples}")
    from facesearch.embedder.export.onnx_prelu import PRELU_FORMS  # imports onnx (~0.5 s): only once exporting

    if fuse_prelu and prelu not in (None, "prelu"):
        raise ValueError(f"fuse_prelu=True asks for PRelu nodes but prelu={prelu!r}: pass one of them")
    prelu = "prelu" if fuse_prelu else (prelu or DEFAULT_PRELU_FORM)
    if prelu not in PRELU_FORMS:
        raise ValueError(f"unknown PReLU form {prelu!r}: expected one of {list(PRELU_FORMS)}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    _check_replaceable(out_dir)
    _, height, width, _ = model.input_shape
    if alignment_template is None:
        alignment_template = TEMPLATE_FOR_INPUT_SIZE.get((height, width), "none")
    name = name or f"mfn-{height}x{width}-{weights_digest(model)[:8]}"

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        x = parity_inputs(parity_samples, height, width, seed, mean=mean, std=std)
        measured = _write_models(model, build, x, onnx=onnx, savedmodel=savedmodel, opset=opset,
                                 prelu=prelu, out_dir=out_dir)
        card = ModelCard(
            name=name, input_height=height, input_width=width, embedding_size=int(model.output_shape[-1]),
            alignment_template=alignment_template, mean=tuple(map(float, mean)), std=tuple(map(float, std)),
            onnx_sha256=sha256_file(build / ONNX_FILE) if onnx else "", opset=opset,
            source_checkpoint=source or model.name, thresholds=dict(thresholds or {}),
        )
        card.save(build)
        report = ExportReport(name=name, parity_samples=parity_samples, seed=seed,
                              min_cosine_required=PARITY_MIN_COSINE, opset=opset,
                              seconds=round(time.perf_counter() - started, 3), **measured)
        atomic_write_json(build / REPORT_FILE, asdict(report))
        _replace_dir(build, out_dir)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return card


def _write_models(model, build: Path, x: np.ndarray, *, onnx: bool, savedmodel: bool, opset: int,
                  prelu: str, out_dir: Path) -> dict:
    """Write the asked-for formats into `build`, checking each against Keras on `x`; the figures measured."""
    reference = _keras_embed(model, x)
    measured: dict = {}
    if onnx:
        proto, measured["prelu_fused"] = convert_to_onnx(model, opset=opset, prelu=prelu)
        measured["prelu_form"] = prelu
        atomic_write_bytes(build / ONNX_FILE, proto.SerializeToString())
        measured["onnx_min_cosine"], measured["onnx_max_abs_diff"] = _check(
            "ONNX", _onnx_embed(build / ONNX_FILE, x), reference, out_dir)
    if savedmodel:
        save_savedmodel(model, build / SAVEDMODEL_DIR)
        measured["savedmodel_min_cosine"], measured["savedmodel_max_abs_diff"] = _check(
            "SavedModel", _savedmodel_embed(build / SAVEDMODEL_DIR, x), reference, out_dir)
    return measured


def weights_digest(model) -> str:
    """Hex sha256 over a model's weights (names, shapes and values): same weights, same digest."""
    h = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(np.asarray(weight))
        h.update(f"{weight.path}:{value.dtype}:{value.shape};".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def convert_to_onnx(model, *, opset: int = 17, prelu: str = DEFAULT_PRELU_FORM):
    """Convert a Keras embedding model to ONNX with tf2onnx and rewrite its PReLUs.

    Args:
        model: Keras model (None, H, W, 3) float32 -> (None, D).
        opset: ONNX opset.
        prelu: the PReLU form, one of `onnx_prelu.PRELU_FORMS` ("tf2onnx" keeps the five ops).

    Returns:
        (onnx.ModelProto with input `image` and output `embedding`, both with batch axis `batch`,
        byte-for-byte the same for the same weights; the number of PReLUs rewritten).
    """
    import onnx
    import tensorflow as tf
    import tf2onnx

    from facesearch.embedder.export.onnx_names import canonical_names
    from facesearch.embedder.export.onnx_prelu import rewrite_prelu

    _, height, width, channels = model.input_shape
    # Keras 3 models need an explicit signature; without one tf2onnx fails to trace them.
    signature = [tf.TensorSpec((None, height, width, channels), tf.float32, name=INPUT_NAME)]
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=opset)
    _rename_output(proto.graph, EMBEDDING_NAME)
    for value in (*proto.graph.input, *proto.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    proto, rewritten = rewrite_prelu(proto, prelu)
    proto = canonical_names(proto)
    onnx.checker.check_model(proto)
    return proto, rewritten


def save_savedmodel(model, path: str | os.PathLike) -> None:
    """Save `model` as a SavedModel whose `serving_default` maps `image` to `embedding`."""
    import tensorflow as tf

    _, height, width, channels = model.input_shape

    class _Serving(tf.Module):
        def __init__(self, keras_model):
            super().__init__()
            self.model = keras_model

        @tf.function(input_signature=[tf.TensorSpec((None, height, width, channels), tf.float32, name=INPUT_NAME)])
        def serve(self, image):
            return {EMBEDDING_NAME: self.model(image, training=False)}

    module = _Serving(model)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def parity_inputs(n: int, height: int, width: int, seed: int = 0, *, mean=PIXEL_MEAN, std=PIXEL_STD) -> np.ndarray:
    """(n, height, width, 3) float32 random pixels normalised as the model card says: (p - mean) / std."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(n, height, width, 3))
    return ((pixels - np.asarray(mean)) / np.asarray(std)).astype(np.float32)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n,) cosine between matching rows of two (n, d) arrays."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norms, 1e-30)


def _check(what: str, got: np.ndarray, want: np.ndarray, out_dir: Path) -> tuple[float, float]:
    """(min row cosine, max abs difference) of `got` vs `want`; raises below PARITY_MIN_COSINE."""
    if got.shape != want.shape:
        raise ExportParityError(
            f"{what} export returns shape {got.shape}, Keras {want.shape}; the export was discarded "
            f"and '{out_dir}' is unchanged"
        )
    cosine = float(row_cosines(got, want).min())
    if not cosine >= PARITY_MIN_COSINE:  # `not >=` also catches NaN
        raise ExportParityError(
            f"{what} export does not reproduce the Keras embeddings: min cosine {cosine:.7f} over "
            f"{len(want)} samples (required >= {PARITY_MIN_COSINE}); the export was discarded and "
            f"'{out_dir}' is unchanged. Try another opset, or report the checkpoint as a converter bug"
        )
    return cosine, float(np.abs(got - want).max())


def _keras_embed(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model(x, training=False), dtype=np.float32)


def _in_two_batches(run, x: np.ndarray) -> np.ndarray:
    # One row alone, then the rest: proves the batch axis really is dynamic.
    return np.concatenate([run(x[:1]), run(x[1:])]) if len(x) > 1 else run(x)


def _onnx_embed(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return _in_two_batches(lambda batch: session.run([EMBEDDING_NAME], {INPUT_NAME: batch})[0], x)
    except Exception as e:  # ORT raises its own untyped exceptions for graphs it cannot run
        raise ExportParityError(f"ONNX Runtime cannot run the converted model: {e}") from e


def _savedmodel_embed(path: Path, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    return _in_two_batches(lambda batch: serve(**{INPUT_NAME: tf.constant(batch)})[EMBEDDING_NAME].numpy(), x)


def _rename_output(graph, new: str) -> None:
    """Rename the graph's single output tensor to `new` everywhere it appears."""
    old = graph.output[0].name
    if old == new:
        return
    for node in graph.node:
        node.output[:] = [new if o == old else o for o in node.output]
        node.input[:] = [new if i == old else i for i in node.input]
    graph.output[0].name = new


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace anything but an earlier export or an empty folder."""
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / CARD_FILE).is_file()):
        raise ModelSpecError(
            f"'{out_dir}' exists and is not a model export (no {CARD_FILE}); refusing to replace it: "
            "choose another output folder or remove it"
        )


def _replace_dir(build: Path, out_dir: Path) -> None:
    """Move the finished `build` folder to `out_dir`, replacing an earlier export only now."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.{uuid.uuid4().hex[:8]}.old")
        os.replace(out_dir, old)
    # A crash between the two renames leaves the earlier export intact in the hidden `.old` folder.
    os.replace(build, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
