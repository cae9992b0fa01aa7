"""The model card: everything needed to feed an exported model and trust what it returns."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from facesearch.embedder.core.atomic import atomic_write_json
from facesearch.embedder.core.constants import EMBEDDING_NAME, INPUT_NAME, PIXEL_MEAN, PIXEL_STD
from facesearch.embedder.core.errors import ModelSpecError

CARD_FILE = "model_card.json"
CARD_VERSION = 1

# Used by `query` when a model card carries no calibrated threshold. A cosine of 0.3 between
# L2-normalised ArcFace-family embeddings is a common "same person" cut-off (insightface uses
# 0.2-0.4 depending on the model); `facesearch eval lfw --calibrate` replaces it with a measured one.
DEFAULT_THRESHOLD = 0.3


@dataclass(frozen=True)
class ModelCard:
    """Describes an exported embedding model.

    The model takes `(n, input_height, input_width, 3)` float32 images in `channel_order`,
    normalised as `(x - mean) / std` per channel, aligned to `alignment_template`, and returns
    `(n, embedding_size)` embeddings (facesearch L2-normalises them).
    """

    name: str
    input_height: int
    input_width: int
    embedding_size: int
    alignment_template: str
    channel_order: str = "RGB"
    mean: tuple[float, float, float] = (PIXEL_MEAN,) * 3
    std: tuple[float, float, float] = (PIXEL_STD,) * 3
    onnx_file: str = "model.onnx"
    onnx_sha256: str = ""
    input_name: str = INPUT_NAME
    output_name: str = EMBEDDING_NAME
    opset: int = 17
    source_checkpoint: str = ""
    # Calibrated score thresholds, e.g. {"best_accuracy": 0.31, "far_1e-3": 0.42}.
    thresholds: dict[str, float] = field(default_factory=dict)
    # How the model was made and what it was proven against, in words and figures (e.g. the default model's
    # conversion and its parity with dlib's own descriptors); free-form, for people reading the card.
    provenance: dict = field(default_factory=dict)
    card_version: int = CARD_VERSION

    @property
    def default_threshold(self) -> float:
        """The threshold `query` uses when none is given: FAR=1e-3, else best accuracy, else DEFAULT_THRESHOLD."""
        for key in ("far_1e-3", "best_accuracy"):
            if key in self.thresholds:
                return float(self.thresholds[key])
        return DEFAULT_THRESHOLD

    def describe(self) -> str:
        """A short human name, e.g. `'mfn-112x96' (128-d)`."""
        return f"'{self.name}' ({self.embedding_size}-d)"

    def same_model(self, other: ModelCard) -> bool:
        """Whether two cards describe the same weights (by ONNX digest when both have one)."""
        if self.onnx_sha256 and other.onnx_sha256:
            return self.onnx_sha256 == other.onnx_sha256
        return (self.name, self.embedding_size) == (other.name, other.embedding_size)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "model card") -> ModelCard:
        """Build a card from JSON data, refusing unknown versions and missing fields."""
        if not isinstance(d, dict):
            raise ModelSpecError(f"{source}: expected a JSON object, got {type(d).__name__}")
        version = d.get("card_version")
        if version != CARD_VERSION:
            raise ModelSpecError(
                f"{source}: model card version {version!r} is not supported (this facesearch reads "
                f"version {CARD_VERSION}); re-export the model with this version of facesearch"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - d.keys())
        if missing:
            raise ModelSpecError(f"{source}: missing fields {missing}")
        kw = {k: v for k, v in d.items() if k in names}
        for key in ("mean", "std"):
            if key in kw:
                kw[key] = tuple(float(v) for v in kw[key])
        return cls(**kw)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `model_card.json` into `folder` atomically and return its path."""
        path = Path(folder) / CARD_FILE
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder_or_file: str | os.PathLike) -> ModelCard:
        """Read a card from a model folder or a card file."""
        path = Path(folder_or_file)
        if path.is_dir():
            path = path / CARD_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelSpecError(f"no model card at '{path}': is this a folder made by `facesearch export`?") from None
        except (OSError, json.JSONDecodeError) as e:
            raise ModelSpecError(f"cannot read model card '{path}': {e}") from e
        return cls.from_dict(data, source=str(path))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
