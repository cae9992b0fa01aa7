"""An opened gallery index: FAISS inner-product search plus identity metadata, read-only."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np

from embedder.core.errors import IndexFormatError, IndexMismatchError
from embedder.core.model_card import ModelCard
from index.manifest import Manifest, read_manifest, rebuild_hint
from index.search import QueryResult, rank_identities
from index.store import FaceRecord, MetadataStore


def read_vectors(path: Path, manifest: Manifest, hint: str) -> faiss.Index:
    """Read a generation's FAISS index and check it against its manifest.

    Raises:
        IndexFormatError: missing or unreadable file, wrong metric, dimension or count.
    """
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as e:
        raise IndexFormatError(f"vector file '{path}' is damaged ({str(e).splitlines()[-1][:200]}) - {hint}") from e
    problem = None
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        problem = "its metric is not inner product"
    elif index.d != manifest.dim or manifest.dim != manifest.model_card.embedding_size:
        problem = (f"it holds {index.d}-d vectors, the manifest says {manifest.dim}-d and the model card "
                   f"{manifest.model_card.embedding_size}-d")
    elif index.ntotal != manifest.count:
        problem = f"it holds {index.ntotal} vectors, the manifest says {manifest.count}"
    if problem:
        raise IndexFormatError(f"vector file '{path}' does not match its manifest: {problem} - {hint}")
    return index


class GalleryIndex:
    """A gallery index opened for search. Use `GalleryIndex.open(index_dir)`.

    Scores are inner products of L2-normalised vectors (cosine similarity): higher is more alike.
    `faiss_index` (a `faiss.IndexIDMap2`, ids = metadata ids) and `store` (the metadata) are the
    lower-level parts, for tools that need more than `search` and `records`.
    """

    def __init__(self, index_dir: Path, manifest: Manifest, vectors: faiss.Index, store: MetadataStore):
        self.index_dir = index_dir
        self.manifest = manifest
        self.faiss_index = vectors
        self.store = store

    @classmethod
    def open(cls, index_dir: str | os.PathLike, card: ModelCard | None = None) -> GalleryIndex:
        """Load the current generation of `index_dir`.

        Args:
            index_dir: a directory written by `build_index`.
            card: the model that will embed queries; if given, it must be the index's model.

        Raises:
            IndexFormatError: missing directory or manifest, unknown format version, missing or
                damaged files, vector count differing from the metadata.
            IndexMismatchError: `card` is another model than the one the index was built with.
        """
        index_dir = Path(index_dir).expanduser().resolve()
        for attempt in (1, 2):
            manifest = read_manifest(index_dir)
            if card is not None:
                manifest.check_model(card)
            try:
                return cls._load(index_dir, manifest)
            except FileNotFoundError as e:
                # A build may have just swapped the manifest and deleted the files we were about
                # to open: read the manifest once more before calling the index damaged.
                if attempt == 2 or read_manifest(index_dir).generation == manifest.generation:
                    raise IndexFormatError(f"index file '{e.args[0]}' named by the manifest is missing - "
                                           f"{rebuild_hint(index_dir, manifest.source_dir)}") from None
        raise AssertionError("unreachable")

    @classmethod
    def _load(cls, index_dir: Path, manifest: Manifest) -> GalleryIndex:
        hint = rebuild_hint(index_dir, manifest.source_dir)
        vectors = read_vectors(index_dir / manifest.vectors_file, manifest, hint)
        meta_path = index_dir / manifest.metadata_file
        if not meta_path.is_file():
            raise FileNotFoundError(meta_path)
        try:
            store = MetadataStore.open_readonly(meta_path)
        except IndexFormatError as e:
            raise IndexFormatError(f"{e} - {hint}") from e
        n_faces, _, _ = store.counts()
        if n_faces != vectors.ntotal:
            store.close()
            raise IndexFormatError(f"index '{index_dir}' is inconsistent: {vectors.ntotal} vectors but "
                                   f"{n_faces} metadata rows - {hint}")
        return cls(index_dir, manifest, vectors, store)

    # --- properties ----------------------------------------------------------------------

    @property
    def card(self) -> ModelCard:
        """The model card the index was built with."""
        return self.manifest.model_card

    @property
    def model_dir(self) -> Path:
        """The model folder the index was built with (where `query` finds the model)."""
        return Path(self.manifest.model_dir)

    @property
    def source_dir(self) -> Path:
        """The gallery folder; record paths are relative to it."""
        return Path(self.manifest.source_dir)

    @property
    def dim(self) -> int:
        return self.manifest.dim

    def __len__(self) -> int:
        return int(self.faiss_index.ntotal)

    def check_model(self, card: ModelCard) -> None:
        """Raise `IndexMismatchError` unless queries embedded by `card`'s model can be searched here."""
        self.manifest.check_model(card)

    # --- search --------------------------------------------------------------------------

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The `k` most similar stored vectors of each query.

        Args:
            vectors: `(m, d)` float32 queries, rows L2-normalised.
            k: neighbours per query; more than `len(self)` returns `len(self)`.

        Returns:
            scores `(m, min(k, n))` float32, best first, and ids `(m, min(k, n))` int64.

        Raises:
            TypeError: `vectors` is not a float32 numpy array.
            ValueError: `vectors` is not 2-D, or `k < 1`.
            IndexMismatchError: `d` differs from the index's dimension.
        """
        if not isinstance(vectors, np.ndarray) or vectors.dtype != np.float32:
            got = vectors.dtype if isinstance(vectors, np.ndarray) else type(vectors).__name__
            raise TypeError(f"query vectors must be a float32 numpy array, got {got}")
        if vectors.ndim != 2:
            raise ValueError(f"query vectors must have shape (m, {self.dim}), got {vectors.shape}")
        if vectors.shape[1] != self.dim:
            raise IndexMismatchError(f"query vectors are {vectors.shape[1]}-d but index '{self.index_dir}' holds "
                                     f"{self.dim}-d vectors of model {self.card.describe()}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = min(int(k), len(self))
        if k == 0:
            return np.empty((len(vectors), 0), np.float32), np.empty((len(vectors), 0), np.int64)
        scores, ids = self.faiss_index.search(np.ascontiguousarray(vectors), k)
        return scores, ids

    def records(self, ids: Sequence[int] | np.ndarray) -> list[FaceRecord]:
        """Metadata of stored vectors, in the order of `ids` (1-D).

        Raises:
            KeyError: an id is not in the index.
        """
        return self.store.records(np.asarray(ids, dtype=np.int64).reshape(-1).tolist())

    def rank_identities(self, vector: np.ndarray, k: int = 5, threshold: float | None = None) -> QueryResult:
        """Best-scoring identities for one face; see `index.search.rank_identities`."""
        return rank_identities(self, vector, k=k, threshold=threshold)

    # --- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> GalleryIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"GalleryIndex('{self.index_dir}', {len(self)} vectors, {self.manifest.identities} identities, "
                f"model {self.card.describe()}, generation {self.manifest.generation})")
