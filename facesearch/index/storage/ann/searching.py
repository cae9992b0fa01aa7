"""Searching a segment's index: tuned parameters, a deletion filter over positions, exact re-ranking."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import faiss
import numpy as np

from facesearch.embedder.core.errors import AnnInputError
from facesearch.index.storage.ann.blas import use_blas_for_batches
from facesearch.index.storage.ann.checks import check_queries, check_vectors, positive_int
from facesearch.index.storage.ann.spec import IndexSpec

# The filter is an IDSelectorBitmap of live positions unless asked otherwise. Measured on 1M rows
# (one thread, one query, 0.1% dead; none / bitmap / IDSelectorNot(IDSelectorBatch(dead))):
# HNSW32 ef 256: 0.75 / 0.84 / 1.02 ms; IVF16384,SQ8 nprobe 1024: 2.21 / 2.33 / 2.42 ms (1% dead:
# the same order). Building it: the bitmap packs n bits (1 ms at 10M rows whatever the share);
# the batch hashes every dead id (10M rows: 17 ms at 0.1% dead, 206 ms at 1%, 3.2 s at 10%).
FILTER_METHODS = ("bitmap", "batch")


class LiveFilter:
    """Which positions of a segment are alive, as a FAISS `IDSelector` (build once per tombstone set).

    Build one when the tombstones change and pass it to every `search`: a bool mask given to
    `search` directly is turned into a filter on each call, O(n).

    Attributes:
        n_total: positions the filter covers (the index's ntotal).
        n_live: positions that searches may return.
        selector: the FAISS selector, or None when every position is alive.
    """

    def __init__(self, alive: np.ndarray, method: str = "bitmap"):
        """Args:
            alive: `(n,)` bool, True where the position may be returned.
            method: "bitmap" (`IDSelectorBitmap` of live positions: the faster, see
                `FILTER_METHODS`) or "batch" (`IDSelectorNot(IDSelectorBatch(dead))`).
        """
        alive = np.asarray(alive)
        if alive.dtype != bool or alive.ndim != 1:
            raise AnnInputError(f"alive must be a 1-d bool array over positions, got {alive.dtype} {alive.shape}")
        if method not in FILTER_METHODS:
            raise AnnInputError(f"filter method must be one of {FILTER_METHODS}, got {method!r}")
        self.n_total = int(alive.size)
        self.n_live = int(np.count_nonzero(alive))
        self.method = method
        self.selector = None
        self._keep = ()  # numpy arrays and inner selectors the selector points into
        n_dead = self.n_total - self.n_live
        if n_dead == 0:
            return
        if method == "bitmap":
            bits = np.packbits(alive, bitorder="little")  # FAISS reads bit i as (bits[i >> 3] >> (i & 7)) & 1
            self.selector = faiss.IDSelectorBitmap(self.n_total, faiss.swig_ptr(bits))
            self._keep = (bits,)
        else:
            dead = np.flatnonzero(~alive).astype(np.int64)
            inner = faiss.IDSelectorBatch(dead.size, faiss.swig_ptr(dead))  # copies the ids
            self.selector = faiss.IDSelectorNot(inner)
            self._keep = (dead, inner)

    @classmethod
    def from_dead(cls, dead: np.ndarray, n: int, method: str = "bitmap") -> LiveFilter:
        """A filter over n positions with the positions in `dead` removed."""
        alive = np.ones(positive_int("n", n, minimum=0), bool)
        dead = np.asarray(dead, dtype=np.int64)
        if dead.size and (dead.min() < 0 or dead.max() >= n):
            raise AnnInputError(f"dead positions must lie in [0, {n})")
        alive[dead] = False
        return cls(alive, method)


def search(index: faiss.Index, spec: IndexSpec, queries: np.ndarray, k: int, *,
           alive: LiveFilter | np.ndarray | None = None,
           raw: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k best live positions of a segment for each query, best first.

    Flat indexes are exact. HNSW and IVF use the spec's tuned `ef_search` / `nprobe` (with a
    filter, HNSW still walks dead nodes but never returns them; IVF skips them in the lists it
    scans). Lossy IVF codes (sq8, pq) fetch `k * spec.rerank` candidates and re-score them
    exactly from `raw`, so every returned score is the exact inner product.

    Args:
        index: from `build_and_tune` / `read_index`.
        spec: its spec (tuned).
        queries: `(m, d)` float (cast to float32), L2-normalised for scores to be cosines.
        k: neighbours wanted (>= 1).
        alive: a `LiveFilter` (build it once per tombstone set), or an `(n,)` bool mask of live
            positions (made into a filter on every call: O(n)), or None (all live).
        raw: the segment's raw vectors `(n, d)` float16/float32 (a memmap is fine); required
            for lossy codes, unused otherwise.

    Returns:
        scores `(m, k)` float32 and positions `(m, k)` int64; where fewer than k live rows are
        found the row is padded with -inf / -1.

    Raises:
        AnnInputError: bad queries, k, filter or raw vectors.
    """
    use_blas_for_batches()
    q = check_queries(queries, spec.dim)
    k = positive_int("k", k)
    live = alive if isinstance(alive, LiveFilter) or alive is None else LiveFilter(alive)
    n = int(index.ntotal)
    if live is not None and live.n_total != n:
        raise AnnInputError(f"the filter covers {live.n_total} positions, the index holds {n}")
    if spec.lossy:
        if raw is None:
            raise AnnInputError(f"{spec.factory} stores lossy codes: pass raw= (the segment's raw "
                                "vectors) so that candidates are re-scored exactly")
        rows, _ = check_vectors(raw, spec.dim, "raw vectors")
        if rows < index.ntotal:
            raise AnnInputError(f"raw vectors have {rows} rows, the index holds {index.ntotal}: "
                                "pass the raw vectors of this index's segment")
    m = len(q)
    if n == 0 or (live is not None and live.n_live == 0):
        return np.full((m, k), -np.inf, np.float32), np.full((m, k), -1, np.int64)
    fetch = k * spec.rerank
    selector = live.selector if live is not None else None
    with _one_thread_if(m == 1):
        scores, positions = index.search(q, fetch, params=_params(spec, selector, fetch))
    if spec.lossy:
        scores, positions = rerank(q, positions, raw, k)
    scores = np.where(positions >= 0, scores, -np.inf).astype(np.float32)
    return scores, positions.astype(np.int64)


@contextlib.contextmanager
def _one_thread_if(single: bool) -> Iterator[None]:
    """Search one query on the calling thread alone.

    FAISS splits a search across its OpenMP threads by query, so one query gains nothing from
    them; yet the team still starts, and on a machine whose cores are busy its spinning threads
    cost dearly (HNSW, 100k rows, 2 threads: p50 20 ms against 0.49 ms on one). The OpenMP
    setting belongs to the calling thread, so other threads are unaffected.
    """
    if not single:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _params(spec: IndexSpec, selector, fetch: int) -> faiss.SearchParameters | None:
    if spec.kind == "hnsw":
        # FAISS's HNSW returns at most efSearch results; ask for at least `fetch`.
        return faiss.SearchParametersHNSW(efSearch=max(spec.ef_search or 16, fetch), sel=selector)
    if spec.kind == "ivf":
        return faiss.SearchParametersIVF(nprobe=min(spec.nprobe or 1, spec.nlist), sel=selector)
    return faiss.SearchParameters(sel=selector) if selector is not None else None


def rerank(queries: np.ndarray, candidates: np.ndarray, raw: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact scores of candidate positions from the raw vectors; the k best of each row.

    Args:
        queries: `(m, d)` float32.
        candidates: `(m, c)` int64 positions, -1 for none.
        raw: `(n, d)` raw vectors (float16/float32, memmap fine): only candidate rows are read.
        k: results kept per query.

    Returns:
        scores `(m, k)` float32 (-inf padding) and positions `(m, k)` int64 (-1 padding).
    """
    m, c = candidates.shape
    valid = candidates >= 0
    rows, slot = np.unique(candidates[valid], return_inverse=True)  # sorted rows: one pass over a memmap
    vectors = np.asarray(raw[rows], dtype=np.float32)
    exact = np.full((m, c), -np.inf, np.float32)
    qi = np.nonzero(valid)[0]
    exact[valid] = np.einsum("ij,ij->i", queries[qi], vectors[slot])
    keep = min(k, c)
    order = np.argsort(-exact, axis=1, kind="stable")[:, :keep]
    scores = np.take_along_axis(exact, order, axis=1)
    positions = np.where(np.isfinite(scores), np.take_along_axis(candidates, order, axis=1), -1)
    if keep < k:
        scores = np.pad(scores, ((0, 0), (0, k - keep)), constant_values=-np.inf)
        positions = np.pad(positions, ((0, 0), (0, k - keep)), constant_values=-1)
    return scores, positions
