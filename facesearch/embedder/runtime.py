"""The embedder runtime: photos in, detected and aligned faces, then L2-normalised vectors out.

Imports no TensorFlow: this is the query path (models run on ONNX Runtime or OpenVINO, facesearch.embedder.backend).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facesearch.embedder.align import DLIB_150, PREALIGNED, AlignmentTemplate, get_template
from facesearch.embedder.backend import open_session, resolve_backend
from facesearch.embedder.core.constants import DEFAULT_BATCH_SIZE
from facesearch.embedder.core.errors import FaceSearchError, ImageReadError, ModelSpecError, TooManyFacesError
from facesearch.embedder.core.model_card import ModelCard, sha256_file
from facesearch.embedder.crop import crop_faces
from facesearch.embedder.detect import Detection, Detector, DetectorConfig
from facesearch.embedder.images import read_image, read_image_reduced, resize

CROP_BATCH_PIXELS = 50_000_000  # full-size photos held at once for cropping (150 MB of RGB)


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

    `faces` finds every face of a photo (MTCNN, `facesearch.embedder.detect`) and aligns it to the model card's
    `alignment_template` (`crop_face`); with `aligned=True`, or a card whose template is one
    of `facesearch.embedder.align.PREALIGNED` ("none"), the photo is taken as one ready-made crop instead.

    Args:
        model_dir: a folder written by `facesearch export` (model.onnx + model_card.json).
        threads: inference threads; None lets the backend use every core.
        aligned: take photos as already aligned crops (no detection); None: decided by the card.
        detector: detection options (`facesearch.embedder.detect.DetectorConfig`); None: the defaults.
        backend: "onnxruntime", "openvino" or "auto" for the embedding model and the detector
            (`facesearch.embedder.backend`); None: $FACESEARCH_BACKEND, else "auto".
        batches: it will embed many photos (a worker of `facesearch.embedder.pipeline`): "auto" may then pick
            a backend that starts slower and runs faster (`facesearch.embedder.backend.resolve_backend`).

    Raises:
        ModelSpecError: the folder, card or ONNX file is missing, the file does not match its card,
            or the card names an unknown template or one of another size than the model input.
    """

    def __init__(self, model_dir: str | os.PathLike, *, threads: int | None = None, aligned: bool | None = None,
                 detector: DetectorConfig | None = None, backend: str | None = None, batches: bool = False):
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
        self.threads, self.backend_request, self.batches = threads, backend, batches
        self.backend = resolve_backend(backend, "embedder", batches=batches)
        self._session = open_session(onnx_path, backend=self.backend, role="embedder", threads=threads)
        self._check_signature()
        self._output = self._session.outputs.index(self.card.output_name)
        self._mean = np.asarray(self.card.mean, dtype=np.float32)
        self._inv_std = 1.0 / np.asarray(self.card.std, dtype=np.float32)
        self.aligned = self.card.alignment_template in PREALIGNED if aligned is None else bool(aligned)
        self.template = None if self.aligned else self._template()
        self.detector_config = detector or DetectorConfig()
        self._detector: Detector | None = None
        self._detector_lock = threading.Lock()

    def worker_factory(self, threads: int = 1) -> Callable[[], Embedder]:
        """A picklable recipe for the same embedder in another process (`facesearch.embedder.pipeline`'s workers).

        The copy reads the same model folder with the same options, on `threads` threads, set up
        for many photos (`batches`).
        """
        return functools.partial(Embedder, self.model_dir, threads=threads, aligned=self.aligned,
                                 detector=self.detector_config, backend=self.backend_request, batches=True)

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
                self._detector = Detector(self.detector_config, backend=self.backend_request, batches=self.batches)
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
        (found,) = self.faces_in_files([(path, None)])
        if isinstance(found, ImageReadError):
            raise found
        return found

    def faces_in_files(self, files: Sequence[tuple[str | os.PathLike, bytes | None]], *,
                       max_faces: int | None = None) -> list[list[FaceCrop] | FaceSearchError]:
        """`faces` of several photos at once: R-Net and O-Net run once for all of them.

        A large JPEG is decoded at reduced scale for the detector (libjpeg's DCT scaling to the
        detector's `max_side`); only a photo with a face is then decoded at full size, from which
        dlib's landmarks and the crop are cut.

        Photos are decoded one at a time and only the detector's reduced view of each is held until
        all are searched; full photos are held for cropping up to CROP_BATCH_PIXELS at once.

        Args:
            files: (path, the file's bytes or None to read the file) per photo.
            max_faces: a photo with more faces than this gets a `TooManyFacesError` (before any of its
                faces is aligned); None: no limit.

        Returns:
            Per photo, in order: its crops (as `faces`), or the `ImageReadError` (or `TooManyFacesError`) it gave.
        """
        if self.aligned:
            out = []
            for path, data in files:
                try:
                    image = read_image(path, min_size=self.input_size, data=data)
                except ImageReadError as e:
                    out.append(e)
                    continue
                out.append([FaceCrop(resize(image, *self.input_size), None)])
            return out
        side = self.detector_config.max_side
        # One photo decoded at a time: only the detector's view of each is kept (a 40-megapixel PNG's is 25
        # times smaller), and the full photo only where the view is the photo itself.
        views: list[tuple[np.ndarray, tuple | None, tuple[float, float], np.ndarray | None] | ImageReadError] = []
        for path, data in files:
            try:
                image, factors = read_image_reduced(path, min_size=(side, side) if side else None, data=data)
            except ImageReadError as e:
                views.append(e)
                continue
            view, view_factors = self.detector.view(image)
            views.append((view, view_factors, factors, image if view is image and factors == (1.0, 1.0) else None))
            del image
        ready = [v for v in views if not isinstance(v, ImageReadError)]
        found = iter(self.detector.detect_views([v[0] for v in ready], [v[1] for v in ready]))
        out: list[list[FaceCrop] | FaceSearchError] = []
        batch: list[tuple[int, np.ndarray, Detection]] = []  # faces waiting to be cropped: (place in out, photo, face)
        held = 0  # pixels of the full photos `batch` holds
        for (path, data), v in zip(files, views):
            if isinstance(v, ImageReadError):
                out.append(v)
                continue
            (_, _, (fx, fy), image), detections = v, next(found)
            if max_faces is not None and len(detections) > max_faces:
                out.append(TooManyFacesError(path, len(detections), max_faces))
                continue
            out.append([])
            if not detections:
                continue
            if image is None:
                image = read_image(path, data=data)  # the crop is cut at full resolution
            if (fx, fy) != (1.0, 1.0):
                detections = [_scaled(det, 1 / fx, 1 / fy, image.shape[:2]) for det in detections]
            batch.extend((len(out) - 1, image, det) for det in detections)
            held += image.shape[0] * image.shape[1]
            if held > CROP_BATCH_PIXELS:
                self._crop_into(out, batch)
                batch, held = [], 0
        self._crop_into(out, batch)
        return out

    def _crop_into(self, out: list, batch: list[tuple[int, np.ndarray, Detection]]) -> None:
        """Align the faces of `batch` in one go (dlib's predictor runs on all at once) into their photos' lists."""
        crops = crop_faces([image for _, image, _ in batch], [det.landmarks for _, _, det in batch], self.template)
        for (k, _, det), crop in zip(batch, crops):
            out[k].append(FaceCrop(crop, det.box, det.score, det.landmarks))

    def faces_in(self, image: np.ndarray) -> list[FaceCrop]:
        """Detect and align every face of a decoded (H, W, 3) uint8 RGB photo (see `faces`)."""
        if self.template is None:  # aligned mode
            return [FaceCrop(resize(image, *self.input_size), None)]
        return self._crops(image, self.detector.detect(image))

    def _crops(self, image: np.ndarray, detections: Sequence[Detection]) -> list[FaceCrop]:
        crops = crop_faces([image] * len(detections), [d.landmarks for d in detections], self.template)
        return [FaceCrop(crop, d.box, d.score, d.landmarks) for d, crop in zip(detections, crops)]

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
        y = self._session.run({self.card.input_name: x})[self._output]
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
        inputs = self._session.inputs
        outputs = set(self._session.outputs)
        shape = inputs.get(self.card.input_name)
        expected = [self.card.input_height, self.card.input_width, 3]
        if shape is None or self.card.output_name not in outputs:
            raise ModelSpecError(
                f"the ONNX model has inputs {sorted(inputs)} and outputs {sorted(outputs)}; its card "
                f"expects input '{self.card.input_name}' and output '{self.card.output_name}'"
            )
        if list(shape[1:]) != expected:
            raise ModelSpecError(f"the ONNX input is {shape}; its card expects (batch, {', '.join(map(str, expected))})")


def _scaled(d: Detection, sx: float, sy: float, size: tuple[int, int]) -> Detection:
    """A detection made on a reduced photo, in the pixels of the full (height, width) `size` photo."""
    h, w = size
    x1, y1, x2, y2 = d.box
    box = (min(x1 * sx, w - 1), min(y1 * sy, h - 1), min(x2 * sx, w - 1), min(y2 * sy, h - 1))
    return Detection(box, d.score, (d.landmarks * np.float32([sx, sy])).astype(np.float32))
