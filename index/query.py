"""Photos in, identities out: an embedder and an open gallery, loaded once, answering many photos.

The CLI's `query`, the demo and the service all answer through `FaceSearcher`, so a photo gets
the same answer (the `--json` schema) whichever way it comes in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embedder.core.errors import NoFaceFoundError
from embedder.pipeline import FaceCropLike, select_faces
from index.gallery import GalleryIndex
from index.protocols import EmbedderLike

NO_FACE_HINT = ("try a lower --min-face-size or --face-threshold, or --aligned if the photo is already a "
                "face crop")


class FaceSearcher:
    """Answers photos against a gallery with one embedder; both stay loaded between calls.

    Args:
        gallery: an open `GalleryIndex` (the caller closes it).
        embedder: the model that built the gallery (`IndexMismatchError` otherwise).

    Raises:
        IndexMismatchError: `embedder` is another model than the gallery's.
    """

    def __init__(self, gallery: GalleryIndex, embedder: EmbedderLike):
        gallery.check_model(embedder.card)
        self.gallery = gallery
        self.embedder = embedder

    def threshold(self, threshold: float | None = None) -> float:
        """The score a match needs: `threshold` if given, else the model folder's card default.

        The model folder's card, not the index's copy of it: `eval lfw --calibrate` may have
        calibrated the model's thresholds after the index was built (same weights, same index).
        """
        return self.embedder.card.default_threshold if threshold is None else float(threshold)

    def answer_photo(self, path: str | os.PathLike, *, k: int = 5, threshold: float | None = None,
                     faces: str = "all") -> dict:
        """Every face of the photo at `path` (or its largest, `faces="largest"`), ranked.

        Returns:
            `{"image", "index", "model", "threshold", "faces": [{"box", "verdict", "known",
            "identity", "threshold", "matches": [...]}, ...]}` (`facesearch query --json`).

        Raises:
            ImageReadError: the photo cannot be read.
            NoFaceFoundError: it shows no face.
        """
        crops = list(self.embedder.faces(path))
        if not crops:
            raise NoFaceFoundError(path, NO_FACE_HINT)
        if faces != "all":
            crops = [crops[i] for i in select_faces(crops, faces)]
        return {"image": str(path), "index": str(self.gallery.index_dir), "model": self.embedder.card.name,
                "threshold": self.threshold(threshold), "faces": self.answer_crops(crops, k=k, threshold=threshold)}

    def answer_crops(self, crops: Sequence[FaceCropLike], *, k: int = 5, threshold: float | None = None) -> list[dict]:
        """One answer per face crop: its box and `QueryResult.to_dict()`."""
        vectors = self.embedder.embed([c.image for c in crops])
        return [{"box": None if c.box is None else [float(v) for v in c.box]} | answer
                for c, answer in zip(crops, self.answer_vectors(vectors, k=k, threshold=threshold))]

    def answer_vectors(self, vectors: np.ndarray, *, k: int = 5, threshold: float | None = None) -> list[dict]:
        """`QueryResult.to_dict()` of each `(d,)` row of `vectors` (float32, L2-normalised)."""
        used = self.threshold(threshold)
        return [self.gallery.rank_identities(v, k=k, threshold=used).to_dict() for v in vectors]


def open_searcher(index_dir: str | os.PathLike, embedder: EmbedderLike) -> FaceSearcher:
    """`FaceSearcher(GalleryIndex.open(index_dir), embedder)`; close it with `searcher.gallery.close()`."""
    gallery = GalleryIndex.open(Path(index_dir))
    try:
        return FaceSearcher(gallery, embedder)
    except BaseException:
        gallery.close()
        raise
