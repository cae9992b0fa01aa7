"""An opened gallery index: its segments searched and merged, identity metadata, read-only.

A `GalleryIndex` is a snapshot of one committed generation: writes that happen while it is open
(a build, an enrolment, a compaction) do not change what it answers; open the index again (or
`reopen_if_changed`) to see them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facesearch.embedder.core.errors import IndexFormatError, IndexMismatchError
from facesearch.embedder.core.model_card import ModelCard
from facesearch.index.storage.manifest import Manifest, read_manifest, rebuild_hint
from facesearch.index.storage.segments import Segment, gather_vectors, merge_results
from facesearch.index.storage.store import FaceRecord, IndexStore

# Counting the live metadata rows on open is a full scan; below this many faces it is cheap
# enough (a few ms) to check that they match the vectors every time an index is opened.
COUNT_CHECK_LIMIT = 200_000


def check_search(vectors: np.ndarray, k: int, dim: int, card: ModelCard, where: str) -> int:
    """The checks every gallery's `search` makes of its input; returns `k` as an int.

    Raises:
        TypeError: `vectors` is not a float32 numpy array.
        ValueError: `vectors` is not 2-D, or `k` is not a positive integer.
        IndexMismatchError: `d` differs from `dim` (`where` names the gallery in the message).
    """
    if not isinstance(vectors, np.ndarray) or vectors.dtype != np.float32:
        got = vectors.dtype if isinstance(vectors, np.ndarray) else type(vectors).__name__
        raise TypeError(f"query vectors must be a float32 numpy array, got {got}")
    if vectors.ndim != 2:
        raise ValueError(f"query vectors must have shape (m, {dim}), got {vectors.shape}")
    if vectors.shape[1] != dim:
        raise IndexMismatchError(f"query vectors are {vectors.shape[1]}-d but {where} holds "
                                 f"{dim}-d vectors of model {card.describe()}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


class GalleryIndex:
    """A gallery index opened for search. Use `GalleryIndex.open(index_dir)`.

    Scores are inner products of L2-normalised vectors (cosine similarity): higher is more alike.
    `segments`, `tombstones` (sorted ids) and `store` (the metadata) are the lower-level parts.
    """

    def __init__(self, index_dir: Path, manifest: Manifest, segments: list[Segment], tombstones: np.ndarray,
                 store: IndexStore):
        self.index_dir = index_dir
        self.manifest = manifest
        self.segments = segments
        self.tombstones = tombstones
        self.store = store
        # Faces without an identity (unlabelled photos' faces whose person has no name) are stored
        # but never searched: a query must not answer one as an identity, nor calibration count it.
        self.unidentified = np.asarray(store.unidentified_ids(), np.int64)
        hidden = np.union1d(tombstones, self.unidentified) if len(self.unidentified) else tombstones
        self._live = [s.live_filter(hidden) for s in segments]

    @classmethod
    def open(cls, index_dir: str | os.PathLike, card: ModelCard | None = None,
             reuse: GalleryIndex | None = None) -> GalleryIndex:
        """Load the current generation of `index_dir`.

        Args:
            index_dir: a directory written by `build_index` (or `facesearch.index.storage.writer`).
            card: the model that will embed queries; if given, it must be the index's model.
            reuse: an open index of an earlier generation whose segments (immutable) are taken
                over instead of read again where the new manifest still names them.

        Raises:
            IndexFormatError: missing directory or manifest, unknown or old format version, missing
                or damaged files, vector counts differing from the metadata.
            IndexMismatchError: `card` is another model than the one the index was built with.
        """
        index_dir = Path(index_dir).expanduser().resolve()
        for attempt in (1, 2):
            manifest = read_manifest(index_dir)
            if card is not None:
                manifest.check_model(card)
            try:
                return cls._load(index_dir, manifest, reuse)
            except FileNotFoundError as e:
                # A write may have just swapped the manifest and deleted the files we were about
                # to open: read the manifest once more before calling the index damaged.
                if attempt == 2 or read_manifest(index_dir).generation == manifest.generation:
                    raise IndexFormatError(f"index file '{e.args[0]}' named by the manifest is missing - "
                                           f"{rebuild_hint(index_dir, manifest.source_dir)}") from None
        raise AssertionError("unreachable")

    @classmethod
    def _load(cls, index_dir: Path, manifest: Manifest, reuse: GalleryIndex | None = None) -> GalleryIndex:
        hint = rebuild_hint(index_dir, manifest.source_dir)
        # Segment numbers are never reused, and a segment never changes: the number names its files.
        opened = {s.info.number: s for s in reuse.segments} if reuse is not None and reuse.index_dir == index_dir \
            else {}
        try:
            segments = [opened[info.number] if info.number in opened and opened[info.number].info == info
                        else Segment.open(index_dir, info, manifest.dim) for info in manifest.segments]
            tombstones = read_tombstones(index_dir, manifest)
            store = IndexStore.open_reader(index_dir / manifest.metadata_file, manifest.generation)
        except IndexFormatError as e:
            raise IndexFormatError(f"{e} - {hint}") from e
        try:
            check_counts(store, manifest, hint)
        except BaseException:
            store.close()
            raise
        return cls(index_dir, manifest, segments, tombstones, store)

    def reopen_if_changed(self) -> GalleryIndex:
        """This index if its manifest still names the same generation, else the current one, opened
        with this one's unchanged segments taken over (so a small write costs a small reopen).
        The caller closes this one when it no longer answers from it."""
        if read_manifest(self.index_dir).generation == self.manifest.generation:
            return self
        return GalleryIndex.open(self.index_dir, reuse=self)

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
        """The gallery folder; folder photos' paths are relative to it."""
        return Path(self.manifest.source_dir)

    @property
    def dim(self) -> int:
        return self.manifest.dim

    @property
    def exact(self) -> bool:
        """Whether every segment is searched exhaustively (flat): ranking is then exact."""
        return all(s.exact for s in self.segments)

    def __len__(self) -> int:
        return self.manifest.faces

    def check_model(self, card: ModelCard) -> None:
        """Raise `IndexMismatchError` unless queries embedded by `card`'s model can be searched here."""
        self.manifest.check_model(card)

    # --- search --------------------------------------------------------------------------

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The `k` most similar live vectors with an identity of each query, over every segment
        (faces of unlabelled photos are searched only once their person is named).

        Args:
            vectors: `(m, d)` float32 queries, rows L2-normalised.
            k: neighbours per query; more than `len(self)` returns `len(self)`.

        Returns:
            scores `(m, min(k, n))` float32, best first, and ids `(m, min(k, n))` int64. Exact for
            flat segments; approximate segments give their approximate neighbours (facesearch.index.storage.ann).

        Raises:
            TypeError: `vectors` is not a float32 numpy array.
            ValueError: `vectors` is not 2-D, or `k < 1`.
            IndexMismatchError: `d` differs from the index's dimension.
        """
        k = min(check_search(vectors, k, self.dim, self.card, f"index '{self.index_dir}'"), len(self))
        m = len(vectors)
        if k == 0:
            return np.empty((m, 0), np.float32), np.empty((m, 0), np.int64)
        queries = np.ascontiguousarray(vectors)
        parts = [seg.search(queries, k, live) for seg, live in zip(self.segments, self._live)]
        scores, ids = merge_results(parts, k) if len(parts) > 1 else parts[0]
        return scores[:, :k], ids[:, :k]

    def ids(self) -> np.ndarray:
        """Every live id, sorted, `(len(self),)` int64."""
        stored = np.concatenate([s.ids for s in self.segments]) if self.segments else np.empty(0, np.int64)
        return np.sort(np.setdiff1d(stored, self.tombstones))

    def records(self, ids: Sequence[int] | np.ndarray) -> list[FaceRecord]:
        """Metadata of stored vectors, in the order of `ids` (1-D).

        Raises:
            KeyError: an id is not live in the index.
        """
        return self.store.records(np.asarray(ids, dtype=np.int64).reshape(-1).tolist())

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """The stored vectors of live `ids`, `(len(ids), d)` float32, in order.

        Raises:
            KeyError: an id is not live in the index.
        """
        return gather_vectors(self.segments, self.tombstones, ids, self.dim)

    # --- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> GalleryIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        kinds = ",".join(sorted({s.info.kind for s in self.segments})) or "empty"
        return (f"GalleryIndex('{self.index_dir}', {len(self)} vectors in {len(self.segments)} segment(s) "
                f"({kinds}), {self.manifest.identities} identities, model {self.card.describe()}, "
                f"generation {self.manifest.generation})")


def read_tombstones(index_dir: Path, manifest: Manifest) -> np.ndarray:
    """The sorted int64 ids the manifest's tombstone file lists (empty without one).

    Raises:
        FileNotFoundError: the file is missing.
        IndexFormatError: it is unreadable or holds another count than the manifest says.
    """
    if manifest.tombstones is None:
        return np.empty(0, np.int64)
    path = index_dir / manifest.tombstones
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        dead = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise IndexFormatError(f"tombstone file '{path}' is damaged ({e})") from e
    if dead.dtype != np.int64 or dead.shape != (manifest.dead,):
        raise IndexFormatError(f"tombstone file '{path}' holds {dead.dtype} {dead.shape}, the manifest says "
                               f"{manifest.dead} int64 ids")
    return dead


def check_counts(store: IndexStore, manifest: Manifest, hint: str) -> None:
    """Raise `IndexFormatError` unless the metadata's live rows match the manifest's vectors."""
    where = f"index '{store.path.parent}'"
    recorded = store.recorded_counts(manifest.generation)
    if recorded is None:
        raise IndexFormatError(f"{where} is inconsistent: its metadata has no record of generation "
                               f"{manifest.generation} - {hint}")
    if recorded.faces != manifest.faces:
        raise IndexFormatError(f"{where} is inconsistent: {manifest.faces} live vectors but the metadata recorded "
                               f"{recorded.faces} faces - {hint}")
    if manifest.faces <= COUNT_CHECK_LIMIT and (rows := store.count_faces()) != manifest.faces:
        raise IndexFormatError(f"{where} is inconsistent: {manifest.faces} vectors but {rows} metadata rows - {hint}")
