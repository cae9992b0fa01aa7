"""Photos in, identities out: an embedder and an open gallery, loaded once, answering many photos.

The CLI's `query`, the demo and the service all answer through `FaceSearcher`, so a photo gets
the same answer (the `--json` schema) whichever way it comes in.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from facesearch.embedder.core.boxes import box_list
from facesearch.embedder.core.constants import DEFAULT_BATCH_SIZE
from facesearch.embedder.core.errors import EmbeddingShardError, NoFaceFoundError
from facesearch.embedder.core.model_card import ModelCard
from facesearch.embedder.pipeline import FaceCropLike, embed_photos, select_faces
from facesearch.index.openset.calibration import resolve_decision
from facesearch.index.openset.decision import Decision
from facesearch.index.openset.ranking import IdentityFaces, rank_batch
from facesearch.index.protocols import EmbedderLike
from facesearch.index.storage.gallery import GalleryIndex
from facesearch.index.sync.scan import scan_folder

NO_FACE_HINT = ("try a lower --min-face-size or --face-threshold, or --aligned if the photo is already a "
                "face crop")


class FaceSearcher:
    """Answers photos (or ready-made vectors) against a gallery; the model and the gallery stay loaded.

    Args:
        gallery: an open `GalleryIndex` (the caller closes it).
        embedder: the model that built the gallery (`IndexMismatchError` otherwise); None for a
            searcher that answers vectors only (`answer_vectors`, `answer_file`).
        card: the card whose thresholds apply (default: the embedder's, else the gallery's copy).
        fpir: answer at this false-positive identification rate, from the index's calibration.

    Raises:
        IndexMismatchError: `embedder` (or `card`) is another model than the gallery's.
    """

    def __init__(self, gallery: GalleryIndex, embedder: EmbedderLike | None = None, *, card: ModelCard | None = None,
                 fpir: float | None = None):
        self.card = card if card is not None else embedder.card if embedder is not None else gallery.card
        gallery.check_model(self.card)
        if embedder is not None and card is not None:
            gallery.check_model(embedder.card)
        self.gallery = gallery
        self.embedder = embedder
        self.fpir = fpir
        self._faces = IdentityFaces(gallery)

    def decision(self, threshold: float | None = None) -> Decision:
        """How a face is answered (`facesearch.index.openset.calibration.resolve_decision`): `threshold` (a best-score cut-off)
        if given, else the index's calibration at `fpir` or its own target, else the card's threshold.

        The model folder's card, not the index's copy of it: `eval lfw --calibrate` may have
        calibrated the model's thresholds after the index was built (same weights, same index).

        Raises:
            CalibrationError: `fpir` on an uncalibrated index, or a rate its calibration cannot resolve.
        """
        m = self.gallery.manifest
        return resolve_decision(self.card, m.calibration, m.identities, threshold=threshold, fpir=self.fpir)

    def threshold(self, threshold: float | None = None) -> float:
        """The value a match's decision statistic needs (see `decision`)."""
        return self.decision(threshold).threshold

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
        crops = list(self._embedder().faces(path))
        if not crops:
            raise NoFaceFoundError(path, NO_FACE_HINT)
        if faces != "all":
            crops = [crops[i] for i in select_faces(crops, faces)]
        return {"image": str(path)} | self.header(threshold) | {
            "faces": self.answer_crops(crops, k=k, threshold=threshold)}

    def answer_photos(self, paths: Sequence[str | os.PathLike], *, k: int = 5, threshold: float | None = None,
                      faces: str = "all", batch_size: int = DEFAULT_BATCH_SIZE,
                      workers: int | None = None) -> Iterator[dict]:
        """`answer_photo` for many photos, read ahead and embedded in batches; one answer each, in order.

        A photo that cannot be read or shows no face gives `{"image", ..., "faces": [], "error",
        "error_type"}` (the message and class `answer_photo` would raise) instead of stopping the run.
        """
        paths = list(paths)
        header = self.header(threshold)
        for batch in embed_photos(paths, self._embedder(), batch_size=batch_size, policy=faces, workers=workers):
            for r in batch:
                path = paths[r.position]
                image = {"image": str(path)}
                error = r.error if r.error is not None else None if r.kept else NoFaceFoundError(path, NO_FACE_HINT)
                if error is not None:
                    yield image | header | {"faces": [], "error": str(error), "error_type": type(error).__name__}
                    continue
                answers = self.answer_vectors(r.vectors, k=k, threshold=threshold)
                yield image | header | {"faces": [{"box": box_list(box)} | answer
                                                  for (_, box), answer in zip(r.kept, answers)]}

    def answer_crops(self, crops: Sequence[FaceCropLike], *, k: int = 5, threshold: float | None = None) -> list[dict]:
        """One answer per face crop: its box and `QueryResult.to_dict()`."""
        vectors = self._embedder().embed([c.image for c in crops])
        return [{"box": box_list(c.box)} | answer
                for c, answer in zip(crops, self.answer_vectors(vectors, k=k, threshold=threshold))]

    def answer_vectors(self, vectors: np.ndarray, *, k: int = 5, threshold: float | None = None) -> list[dict]:
        """`QueryResult.to_dict()` of each `(d,)` row of `vectors` (float32, L2-normalised)."""
        results = rank_batch(self.gallery, np.asarray(vectors, np.float32).reshape(-1, self.gallery.dim), k=k,
                             decision=self.decision(threshold), faces=self._faces)
        return [r.to_dict() for r in results]

    def answer_file(self, file: str | os.PathLike, *, k: int = 5, threshold: float | None = None) -> Iterator[dict]:
        """Answer each row's `embedding` of a Parquet file, in row order, without any image work.

        Yields `{"row", "path" (if the file has that column), "index", "model", "threshold",
        "faces": [{"box", ...}]}`: one face per row, with the content `answer_photo` gives a face.
        The whole file is read and checked before the first answer.

        Raises:
            EmbeddingShardError: not a Parquet file, no `embedding` column, or a row of another
                length than the index's vectors, null, NaN or infinite, or not L2-normalised.
            IndexMismatchError: a model_card.json beside the file names another model.
        """
        from facesearch.embedder.embedding_shards import read_query_vectors  # pyarrow: only when vectors are asked for

        q = read_query_vectors(file)
        if q.card is not None:
            self.gallery.check_model(q.card)
        d = self.gallery.card.embedding_size
        if q.vectors.shape[1] != d:
            raise EmbeddingShardError(f"'{file}' row 0: the embedding has {q.vectors.shape[1]} values; the index holds "
                                      f"{d}-d vectors of model {self.gallery.card.describe()}", file, 0)
        header = self.header(threshold)
        for i, answer in enumerate(self.answer_vectors(q.vectors, k=k, threshold=threshold)):
            box = q.boxes[i] if q.boxes is not None else None
            line = {"row": i} | ({"path": q.paths[i]} if q.paths is not None else {}) | header
            yield line | {"faces": [{"box": box_list(box)} | answer]}

    def header(self, threshold: float | None) -> dict:
        """The answer's fields besides its faces: index, model, threshold and where the threshold came from."""
        decision = self.decision(threshold)
        return {"index": str(self.gallery.index_dir), "model": self.card.name, "threshold": decision.threshold,
                "threshold_source": decision.source}

    def _embedder(self) -> EmbedderLike:
        if self.embedder is None:
            raise ValueError("this FaceSearcher was made without an embedder: it answers vectors, not photos")
        return self.embedder


def photo_paths(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The photos named by `inputs`, in order: a file as given, a folder as its image files sorted by path.

    Raises:
        DatasetError: a folder is missing its images or cannot be listed (`scan_folder`).
    """
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            out.extend(item / f.path for f in scan_folder(item).files)
        else:
            out.append(item)
    return out


def open_searcher(index_dir: str | os.PathLike, embedder: EmbedderLike) -> FaceSearcher:
    """`FaceSearcher(GalleryIndex.open(index_dir), embedder)`; close it with `searcher.gallery.close()`."""
    gallery = GalleryIndex.open(Path(index_dir))
    try:
        return FaceSearcher(gallery, embedder)
    except BaseException:
        gallery.close()
        raise
