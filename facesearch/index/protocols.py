"""What the index needs from an embedder and from a progress display (typing protocols only)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from facesearch.embedder.pipeline import FaceCropLike, FaceSource

__all__ = ["EmbedderLike", "FaceCropLike", "Progress"]


@runtime_checkable
class EmbedderLike(FaceSource, Protocol):
    """The part of `facesearch.embedder.runtime.Embedder` that building and querying an index use:
    the photo loop's `FaceSource` (`card`, `faces`, `embed`), plus where the model lives and how
    it crops (an index records both)."""

    model_dir: Path
    crop_method: str  # how photos become crops; a change means every photo is embedded again


class Progress(Protocol):
    """Called as work advances; the CLI renders it (nothing in `index/` prints).

    `phase` is `"hash"` (checksumming files whose size or mtime changed) or `"embed"`
    (reading and embedding new and changed photos). Each phase starts with a call with
    `done == 0` and the known `total`, and ends with `done == total`.
    """

    def __call__(self, phase: str, done: int, total: int) -> None: ...
