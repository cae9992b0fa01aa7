"""The embedder runtime: ONNX Runtime over an exported model; images in, L2-normalised vectors out.

Imports no TensorFlow: this is the query path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedder.errors import ModelSpecError
from embedder.images import read_image, resize
from embedder.model_card import ModelCard, sha256_file


@dataclass(frozen=True)
class FaceCrop:
    """One face ready for the model.

    Attributes:
        image: (H, W, 3) uint8 RGB at the model's input size.
        box: (x1, y1, x2, y2) in the original photo's pixels, or None for a pre-aligned crop.
    """

    image: np.ndarray
    box: tuple[float, float, float, float] | None = None


class Embedder:
    """Embeds face crops with an exported ONNX model; one session, reused for every call.

    Args:
        model_dir: a folder written by `facesearch export` (model.onnx + model_card.json).
        threads: ONNX Runtime intra-op threads; None lets ONNX Runtime use every core.

    Raises:
        ModelSpecError: the folder, card or ONNX file is missing, or the file does not match its card.
    """

    def __init__(self, model_dir: str | os.PathLike, *, threads: int | None = None):
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
        if threads:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self._check_signature()
        self._mean = np.asarray(self.card.mean, dtype=np.float32)
        self._inv_std = 1.0 / np.asarray(self.card.std, dtype=np.float32)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the model takes."""
        return self.card.input_height, self.card.input_width

    def faces(self, path: str | os.PathLike) -> list[FaceCrop]:
        """The faces of one photo, as crops ready for `embed`.

        The photo is taken as an already aligned face crop and resized to the model input.

        Raises:
            ImageReadError: the file is not a readable image.
        """
        image = read_image(path, min_size=self.input_size)
        return [FaceCrop(resize(image, *self.input_size), None)]

    def embed(self, crops: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
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
