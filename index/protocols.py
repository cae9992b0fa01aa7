"""What the index needs from an embedder and from a progress display (typing protocols only)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from embedder.model_card import ModelCard


class FaceCropLike(Protocol):
    """One face ready for the model, as `embedder.runtime.FaceCrop` provides it."""

    image: np.ndarray  # (H, W, 3) uint8 RGB at the model's input size
    box: tuple[float, float, float, float] | None  # x1, y1, x2, y2 in the photo; None if pre-aligned


@runtime_checkable
class EmbedderLike(Protocol):
    """The part of `embedder.runtime.Embedder` that building and querying an index use.

    `faces` is called from worker threads (image decoding overlaps embedding); `embed` only
    from the thread that called `build_index`.
    """

    card: ModelCard
    model_dir: Path
    crop_method: str  # how photos become crops; a change means every photo is embedded again

    def faces(self, path: str | os.PathLike) -> list[FaceCropLike]:
        """Face crops found in one photo (0..n); raises `ImageReadError` if it cannot be read."""
        ...

    def embed(self, crops: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
        """`(n, d)` float32 embeddings of `crops`, rows L2-normalised, in input order."""
        ...


class Progress(Protocol):
    """Called as work advances; the CLI renders it (nothing in `index/` prints).

    `phase` is `"hash"` (checksumming files whose size or mtime changed) or `"embed"`
    (reading and embedding new and changed photos). Each phase starts with a call with
    `done == 0` and the known `total`, and ends with `done == total`.
    """

    def __call__(self, phase: str, done: int, total: int) -> None: ...
