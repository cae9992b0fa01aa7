"""Segments: immutable slices of a gallery's vectors, each searched on its own and merged by score.

A segment is written once and never changed (Lucene's and Milvus's segments): its raw vectors
(`seg-NNNNNN.vectors.npy`, `(n, d)` float32 or float16, rows L2-normalised, row i = position i),
its ids (`seg-NNNNNN.ids.npy`, `(n,)` int64, ascending) and, for approximate kinds, an index over
positions (`seg-NNNNNN.ann`, see `facesearch.index.storage.ann`). Removed faces stay in their segment until a merge
drops them; searches skip them through a FAISS `IDSelector` built from the tombstones.
Raw vectors are kept so that a merge or a change of index type never embeds a photo again.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from facesearch.embedder.core.errors import IndexFormatError
from facesearch.index.storage.ann.blas import use_blas_for_batches

VECTOR_DTYPES = ("float32", "float16")
KINDS = ("flat", "hnsw", "ivf")


def segment_names(number: int) -> dict[str, str]:
    """File names of segment `number`."""
    stem = f"seg-{number:06d}"
    return {"vectors": f"{stem}.vectors.npy", "ids": f"{stem}.ids.npy", "ann": f"{stem}.ann"}


@dataclass(frozen=True)
class SegmentInfo:
    """A segment as the manifest names it."""

    number: int
    count: int  # rows, live or not
    dtype: str  # of the raw vectors
    kind: str  # "flat" (exact) or an approximate kind of `facesearch.index.storage.ann`
    spec: dict = field(default_factory=dict)  # the approximate index's `IndexSpec.to_dict()`; {} for flat

    @property
    def files(self) -> dict[str, str]:
        names = segment_names(self.number)
        if self.kind == "flat":
            del names["ann"]
        return names

    def to_dict(self) -> dict:
        return {"number": self.number, "count": self.count, "dtype": self.dtype, "kind": self.kind,
                "spec": self.spec, "files": self.files}

    @classmethod
    def from_dict(cls, d: dict) -> SegmentInfo:
        info = cls(int(d["number"]), int(d["count"]), str(d["dtype"]), str(d["kind"]), dict(d.get("spec") or {}))
        if info.dtype not in VECTOR_DTYPES or info.kind not in KINDS or info.count < 0 or info.number < 0:
            raise ValueError(f"bad segment entry {d!r}")
        if d.get("files") != info.files:
            raise ValueError(f"segment {info.number} names files {d.get('files')!r}, expected {info.files!r}")
        return info


def write_segment(folder: Path, number: int, vectors: np.ndarray, ids: np.ndarray, *, dtype: str = "float32",
                  kind: str = "flat", spec: dict | None = None, seed: int = 0, labels: np.ndarray | None = None,
                  threshold: float | None = None) -> SegmentInfo:
    """Write a new segment's files (fsynced) and return its manifest entry.

    Args:
        folder: the index directory.
        number: the segment's number (unique in the index; its files must not be named by the manifest).
        vectors: `(n, d)` float32, rows L2-normalised.
        ids: `(n,)` int64 ids, ascending.
        dtype: how the raw vectors are stored.
        kind: "flat", or an approximate kind whose index `facesearch.index.storage.ann` builds (and tunes) from `spec`.
        spec: the approximate index's spec (`index.ann.IndexSpec.to_dict()`), chosen by the caller.
        labels: `(n,)` int identity code per row (-1: none) for tuning's identity agreement; None:
            unknown (tuning then treats each row as an identity of its own, and says so).
        threshold: the index's calibrated threshold as a cosine (score rule), for tuning's floor;
            None: tuning estimates one from the segment's own scores.
    """
    if dtype not in VECTOR_DTYPES:
        raise ValueError(f"vector dtype must be one of {VECTOR_DTYPES}, got {dtype!r}")
    ids = np.asarray(ids, dtype=np.int64)
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError(f"segment needs (n, d) vectors and n ids, got {vectors.shape} and {ids.shape}")
    if len(ids) > 1 and not np.all(np.diff(ids) > 0):
        raise ValueError("segment ids must be strictly ascending")
    names = segment_names(number)
    _save_npy(folder / names["vectors"], vectors, dtype)
    _save_npy(folder / names["ids"], ids, np.int64)
    if kind == "flat":
        return SegmentInfo(number, len(ids), dtype, "flat")
    from facesearch.index.storage import ann

    index_spec = ann.IndexSpec.from_dict(spec or {})
    built, tuned = ann.build_and_tune(vectors, index_spec, seed=seed, labels=labels, threshold=threshold)
    ann.write_index(built, folder / names["ann"])
    return SegmentInfo(number, len(ids), dtype, kind, tuned.to_dict())


def _save_npy(path: Path, array: np.ndarray, dtype: str | np.dtype, chunk: int = 1 << 16) -> None:
    # A segment file is named by no manifest until the commit: written in place, synced, never changed.
    # Copied in chunks, so that a large memory-mapped input is converted without a second full copy.
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(dtype), shape=array.shape)
    for start in range(0, len(array), chunk):
        out[start:start + chunk] = array[start:start + chunk]
    out.flush()
    del out
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _grown(array: np.ndarray, size: int, used: int) -> np.ndarray:
    grown = np.empty(size, array.dtype)
    grown[:used] = array[:used]
    return grown


class Spool:
    """Vectors appended to a temporary file (a generation's new ones, a merge's live ones), so a large ingest stays out of RAM."""

    def __init__(self, folder: Path, number: int, dim: int):
        self.path = folder / f".seg-{number:06d}.spool.tmp"
        self.dim = dim
        # One growing array, not an array per photo: those cost ~110 bytes each (1.1 GB at 10M photos).
        self._ids = np.empty(1024, np.int64)
        self._labels = np.empty(1024, np.int32)  # identity code per row, -1 for none (for tuning)
        self._codes: dict[str, int] = {}
        self.count = 0
        self._file = None

    def append(self, ids: np.ndarray, vectors: np.ndarray, identity: str | None = None) -> None:
        """Append rows; `identity` (of all of them, "" or None for none) feeds the tuning's identity agreement."""
        if self._file is None:
            self._file = open(self.path, "wb")
        self._file.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        ids = np.asarray(ids, np.int64).ravel()
        if self.count + len(ids) > len(self._ids):
            size = max(2 * len(self._ids), self.count + len(ids))
            self._ids, self._labels = _grown(self._ids, size, self.count), _grown(self._labels, size, self.count)
        self._ids[self.count:self.count + len(ids)] = ids
        self._labels[self.count:self.count + len(ids)] = self._codes.setdefault(identity, len(self._codes)) \
            if identity else -1
        self.count += len(ids)

    def labels(self) -> np.ndarray | None:
        """`(count,)` int64 identity code per row appended (-1: none), or None when no row had an identity."""
        if not self._codes:
            return None
        return self._labels[:self.count].astype(np.int64)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors memmap) of everything appended."""
        self._file.flush()
        vectors = np.memmap(self.path, dtype=np.float32, mode="r", shape=(self.count, self.dim))
        return self._ids[:self.count].copy(), vectors

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
        self.path.unlink(missing_ok=True)


class Segment:
    """An opened segment: its ids, its raw vectors (memory-mapped) and its search index.

    Use `Segment.open(folder, info, dim)`.
    """

    def __init__(self, info: SegmentInfo, ids: np.ndarray, raw: np.ndarray, index: faiss.Index | None = None,
                 spec=None):
        self.info = info
        self.ids = ids
        self.raw = raw
        self._index = index  # flat segments build theirs on first search (a writer may never search)
        self.spec = spec  # facesearch.index.storage.ann.IndexSpec for approximate kinds
        self._lock = threading.Lock()

    @property
    def index(self) -> faiss.Index:
        """The segment's FAISS index over positions (a flat one is built from the raw vectors on first use)."""
        use_blas_for_batches()
        with self._lock:
            if self._index is None:
                self._index = faiss.IndexFlatIP(self.raw.shape[1])
                for start in range(0, len(self.raw), 1 << 16):
                    self._index.add(np.ascontiguousarray(self.raw[start:start + (1 << 16)], dtype=np.float32))
            return self._index

    @classmethod
    def open(cls, folder: Path, info: SegmentInfo, dim: int) -> Segment:
        """Load a segment named by a manifest.

        Raises:
            FileNotFoundError: a file is missing (the caller re-reads the manifest, then calls it damaged).
            IndexFormatError: a file is unreadable or disagrees with the manifest entry.
        """
        files = {k: folder / v for k, v in info.files.items()}
        for path in files.values():
            if not path.is_file():
                raise FileNotFoundError(path)
        try:
            ids = np.load(files["ids"], allow_pickle=False)
            raw = np.load(files["vectors"], mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise IndexFormatError(f"segment {info.number} in '{folder}' is damaged ({e})") from e
        problem = None
        if ids.dtype != np.int64 or ids.shape != (info.count,):
            problem = f"its ids are {ids.dtype} {ids.shape}, the manifest says {info.count} int64"
        elif raw.dtype != np.dtype(info.dtype) or raw.shape != (info.count, dim):
            problem = f"its vectors are {raw.dtype} {raw.shape}, the manifest says {info.dtype} ({info.count}, {dim})"
        if problem:
            raise IndexFormatError(f"segment {info.number} in '{folder}' does not match the manifest: {problem}")
        if info.kind == "flat":
            return cls(info, ids, raw)
        from facesearch.index.storage import ann

        spec = ann.IndexSpec.from_dict(info.spec)
        index = ann.read_index(files["ann"], spec)
        if index.ntotal != info.count or index.d != dim:
            raise IndexFormatError(f"segment {info.number} in '{folder}': its {info.kind} index holds "
                                   f"{index.ntotal} {index.d}-d vectors, the manifest says {info.count} {dim}-d")
        return cls(info, ids, raw, index, spec)

    def __len__(self) -> int:
        return self.info.count

    @property
    def exact(self) -> bool:
        return self.info.kind == "flat"

    def live_filter(self, tombstones: np.ndarray):
        """An `facesearch.index.storage.ann.LiveFilter` of this segment's positions not in the sorted `tombstones`, or
        None when none of its ids is removed. Build it once per tombstone set and pass it to `search`."""
        if not len(tombstones) or not len(self.ids):
            return None
        dead = np.isin(self.ids, tombstones, assume_unique=True)
        if not dead.any():
            return None
        from facesearch.index.storage.ann import LiveFilter

        return LiveFilter(~dead)

    def search(self, queries: np.ndarray, k: int, live=None) -> tuple[np.ndarray, np.ndarray]:
        """The `k` best live rows of this segment for each query.

        Args:
            queries: `(m, d)` float32, C-contiguous.
            k: neighbours wanted.
            live: the segment's `live_filter` (None: every row is live).

        Returns:
            scores `(m, k)` float32 (-inf padding) and ids `(m, k)` int64 (-1 padding), best first.
            Exact for flat segments; for approximate ones, their tuned approximate neighbours
            (with exact scores, re-ranked from the raw vectors where the codes are lossy).
        """
        m = len(queries)
        if self.info.count == 0 or k < 1:
            return np.full((m, max(k, 0)), -np.inf, np.float32), np.full((m, max(k, 0)), -1, np.int64)
        if self.exact:
            params = None if live is None else faiss.SearchParameters(sel=live.selector)
            scores, positions = self.index.search(queries, k, params=params)
        else:
            from facesearch.index.storage import ann

            scores, positions = ann.search(self.index, self.spec, queries, k, alive=live, raw=self.raw)
        ids = np.where(positions >= 0, self.ids[np.maximum(positions, 0)], -1)
        return np.where(positions >= 0, scores, -np.inf).astype(np.float32), ids.astype(np.int64)

    def positions(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Positions of `ids` in this segment, -1 where absent."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(self.ids):
            return np.full(len(ids), -1, np.int64)
        at = np.searchsorted(self.ids, ids).clip(0, len(self.ids) - 1)
        return np.where(self.ids[at] == ids, at, -1)

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        """Raw vectors at `positions`, as `(len, d)` float32."""
        return np.asarray(self.raw[np.asarray(positions, dtype=np.int64)], dtype=np.float32)


def gather_vectors(segments: Sequence[Segment], tombstones: np.ndarray, ids: Sequence[int] | np.ndarray,
                   dim: int) -> np.ndarray:
    """The stored vectors of live `ids` across `segments`, `(len(ids), dim)` float32, in order.

    Raises:
        KeyError: an id is in no segment, or is in `tombstones` (sorted).
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    out = np.zeros((len(ids), dim), np.float32)
    found = np.zeros(len(ids), bool)
    for seg in segments:
        at = seg.positions(ids)
        hit = at >= 0
        if hit.any():
            out[hit] = seg.vectors(at[hit])
            found |= hit
    missing = ~found | np.isin(ids, tombstones)
    if missing.any():
        raise KeyError(f"ids not in the index: {ids[missing][:10].tolist()}")
    return out


def merge_results(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` best of several `(scores, ids)` results for the same queries: by score, then by id."""
    scores = np.concatenate([s for s, _ in parts], axis=1)
    ids = np.concatenate([i for _, i in parts], axis=1)
    order = np.lexsort((ids, -scores.astype(np.float64)), axis=1)[:, :k]
    scores = np.take_along_axis(scores, order, axis=1)
    ids = np.take_along_axis(ids, order, axis=1)
    return scores, ids
