"""The embedder runtime: photos in, detected and aligned faces, then L2-normalised vectors out.

Imports no TensorFlow: this is the query path (detection runs on ONNX Runtime too, embedder.detect).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedder.align import DLIB_150, PREALIGNED, AlignmentTemplate, get_template
from embedder.core.constants import DEFAULT_BATCH_SIZE
from embedder.core.errors import ModelSpecError
from embedder.core.model_card import ModelCard, sha256_file
from embedder.crop import crop_face
from embedder.detect import Detector, DetectorConfig
from embedder.images import read_image, resize


@dataclass(frozen=True)
class FaceCrop:
    """One face ready for the model.

    Attributes:
        image: (H, W, 3) uint8 RGB at the model's input size.
        box: (x1, y1, x2, y2) in the original photo's pixels, or None for a pre-aligned crop.
        score: the detector's face score in [0, 1], or None for a pre-aligned crop.
        landmarks: (5, 2) float32 (x, y) in the photo (eyes, nose tip, mouth corners), or None.
            MTCNN's points, also for the `dlib-150` template (whose crop comes from dlib's own
            points, see `crop_face`).
    """

    image: np.ndarray
    box: tuple[float, float, float, float] | None = None
    score: float | None = None
    landmarks: np.ndarray | None = None


class Embedder:
    """Embeds face crops with an exported ONNX model; one session, reused for every call.

    `faces` finds every face of a photo (MTCNN, `embedder.detect`) and aligns it to the model card's
    `alignment_template` (`crop_face`); with `aligned=True`, or a card whose template is one
    of `embedder.align.PREALIGNED` ("none"), the photo is taken as one ready-made crop instead.

    Args:
        model_dir: a folder written by `facesearch export` (model.onnx + model_card.json).
        threads: ONNX Runtime intra-op threads; None lets ONNX Runtime use every core.
        aligned: take photos as already aligned crops (no detection); None: decided by the card.
        detector: detection options (`embedder.detect.DetectorConfig`); None: the defaults.

    Raises:
        ModelSpecError: the folder, card or ONNX file is missing, the file does not match its card,
            or the card names an unknown template or one of another size than the model input.
    """

    def __init__(self, model_dir: str | os.PathLike, *, threads: int | None = None, aligned: bool | None = None,
                 detector: DetectorConfig | None = None):
        import onnxruntime as ort  # deferred: keeps `import embedder.runtime` cheap for --help

        self.model_dir = Path(model_dir).resolve()
        if not self.model_dir.is_dir():
            raise ModelSpecError(f"model folder '{model_dir}' does not exist: pass a folder made by `facesearch export`")
        self.card = ModelCard.load(self.model_dir)
        onnx_path = self.model_dir / self.card.onnx_file
        if not onnx_path.is_file():
            raise ModelSpecError(f"'{onnx_path}' is missing: export the model with --onnx")
        if self.card.onnx_sha256 and sha256_file(onnx_path) != self.card.onnx_sha256:
            raise ModelSpecError(
                f"'{onnx_path}' does not match the sha256 in its model card: the file was changed "
                "after export; export the model again"
            )
        options = ort.SessionOptions()
        # Idle ONNX Runtime threads spin by default, starving the threads that read photos beside
        # them (index builds): with spinning off, build_index ran ~1.5x faster on 2 cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self._check_signature()
        self._mean = np.asarray(self.card.mean, dtype=np.float32)
        self._inv_std = 1.0 / np.asarray(self.card.std, dtype=np.float32)
        self.aligned = self.card.alignment_template in PREALIGNED if aligned is None else bool(aligned)
        self.template = None if self.aligned else self._template()
        self.detector_config = detector or DetectorConfig()
        self._detector: Detector | None = None
        self._detector_lock = threading.Lock()

    @property
    def crop_method(self) -> str:
        """How this embedder turns a photo into crops; an index records it, since vectors made
        one way are not comparable with vectors made another, even by the same model."""
        if self.template is None:
            return "whole-photo-resize"
        if self.template.name == DLIB_150.name:
            return f"dlib-5-point-chip/{DLIB_150.name}"  # crop_face: dlib's predictor and chip
        return f"mtcnn-5-point/{self.template.name}"

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the model takes."""
        return self.card.input_height, self.card.input_width

    @property
    def detector(self) -> Detector:
        """The face detector, built on first use (thread-safe)."""
        with self._detector_lock:
            if self._detector is None:
                self._detector = Detector(self.detector_config)
            return self._detector

    def faces(self, path: str | os.PathLike) -> list[FaceCrop]:
        """The faces of one photo, as crops ready for `embed`; safe to call from several threads.

        Returns:
            Every face found, highest detector score first, each aligned to the card's template
            (box, score, landmarks filled); an empty list when the photo has no face. In aligned
            mode: the whole photo resized to the model input, as one crop without a box.

        Raises:
            ImageReadError: the file is not a readable image.
        """
        if self.aligned:
            image = read_image(path, min_size=self.input_size)
            return [FaceCrop(resize(image, *self.input_size), None)]
        return self.faces_in(read_image(path))

    def faces_in(self, image: np.ndarray) -> list[FaceCrop]:
        """Detect and align every face of a decoded (H, W, 3) uint8 RGB photo (see `faces`)."""
        if self.template is None:  # aligned mode
            return [FaceCrop(resize(image, *self.input_size), None)]
        return [FaceCrop(crop_face(image, d.landmarks, self.template), d.box, d.score, d.landmarks)
                for d in self.detector.detect(image)]

    def embed(self, crops: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Embed face crops.

        Args:
            crops: each (H, W, 3) uint8 RGB at the model input size (see `faces`).
            batch_size: images per ONNX Runtime call.

        Returns:
            (n, d) float32, rows L2-normalised, in the order of `crops`.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        h, w = self.input_size
        out = np.empty((len(crops), self.card.embedding_size), dtype=np.float32)
        for start in range(0, len(crops), batch_size):
            chunk = crops[start:start + batch_size]
            for i, crop in enumerate(chunk):
                if crop.shape != (h, w, 3) or crop.dtype != np.uint8:
                    raise ValueError(
                        f"crop {start + i} is {crop.dtype} {crop.shape}; expected uint8 {(h, w, 3)} (use Embedder.faces)"
                    )
            out[start:start + len(chunk)] = self._run(self._preprocess(np.stack(chunk)))
        return out

    def _preprocess(self, batch: np.ndarray) -> np.ndarray:
        x = batch.astype(np.float32)
        if self.card.channel_order == "BGR":
            x = x[..., ::-1]
        return np.ascontiguousarray((x - self._mean) * self._inv_std)

    def _run(self, x: np.ndarray) -> np.ndarray:
        (y,) = self._session.run([self.card.output_name], {self.card.input_name: x})
        y = y.reshape(len(x), -1).astype(np.float32, copy=False)
        norms = np.linalg.norm(y, axis=1, keepdims=True)
        return y / np.maximum(norms, 1e-12)

    def _template(self) -> AlignmentTemplate:
        template = get_template(self.card.alignment_template)
        if (template.height, template.width) != self.input_size:
            raise ModelSpecError(
                f"model {self.card.describe()} takes {self.input_size[0]}x{self.input_size[1]} inputs but its "
                f"alignment template '{template.name}' makes {template.height}x{template.width} crops: "
                "fix alignment_template in its model_card.json")
        return template

    def _check_signature(self) -> None:
        inputs = {i.name: i.shape for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        shape = inputs.get(self.card.input_name)
        expected = [self.card.input_height, self.card.input_width, 3]
        if shape is None or self.card.output_name not in outputs:
            raise ModelSpecError(
                f"the ONNX model has inputs {sorted(inputs)} and outputs {sorted(outputs)}; its card "
                f"expects input '{self.card.input_name}' and output '{self.card.output_name}'"
            )
        if list(shape[1:]) != expected:
            raise ModelSpecError(f"the ONNX input is {shape}; its card expects (batch, {', '.join(map(str, expected))})")
