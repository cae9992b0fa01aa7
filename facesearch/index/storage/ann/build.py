"""Building a segment's index: create it from its spec, train IVF on a seeded sample, add rows in chunks.

Vectors may be a memory-mapped `.npy` (float16 or float32): they are read `CHUNK_ROWS` rows at a
time, so a 10M-row build holds the index, the IVF training sample and one float32 chunk, never a
second full copy. Position i of the input is FAISS id i.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import faiss
import numpy as np

from facesearch.embedder.core.errors import AnnInputError
from facesearch.index.storage.ann.blas import use_blas_for_batches
from facesearch.index.storage.ann.checks import (
    CHUNK_ROWS,
    check_positions,
    check_vectors,
    float32_rows,
    insertion_order,
    positive_int,
)
from facesearch.index.storage.ann.rules import train_size
from facesearch.index.storage.ann.spec import IndexSpec
from facesearch.index.storage.ann.tuning import tune

# Called as progress(phase, done, total): phases "train", "add", "tune"; each starts at done == 0.
Progress = Callable[[str, int, int], None]

KMEANS_NITER = 10  # FAISS's IVF default; k-means cost is iterations x sample x nlist x d on 2 cores
# From this many lists, flat k-means (sample x nlist x d per iteration: 1.6M x 16384 x 128 would be
# ~2.5 min per iteration here) gives way to two-level k-means: sqrt(nlist) coarse clusters, each
# split in proportion to its size. Measured: 4096 lists on 409,600 points, 6 s per iteration.
TWO_LEVEL_MIN_NLIST = 8192


def new_index(spec: IndexSpec) -> faiss.Index:
    """An empty, untrained index of `spec`'s structure (inner-product metric)."""
    index = faiss.index_factory(spec.dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    if spec.kind == "hnsw":
        index.hnsw.efConstruction = spec.ef_construction
    if spec.kind == "ivf":
        index.cp.niter = KMEANS_NITER
        if spec.codes.startswith("pq"):
            # The factory turns on polysemous training (Hamming-distance filtering we never use):
            # 177 of the 225 s that a 30k-vector IVF-PQ build took here.
            index.do_polysemous_training = False
            index.pq.cp.niter = KMEANS_NITER
    apply_search_defaults(index, spec)
    return index


def apply_search_defaults(index: faiss.Index, spec: IndexSpec) -> None:
    """Store `spec`'s tuned search parameter on the index object itself (for callers that search it
    directly; `facesearch.index.storage.ann.search` passes it per call anyway)."""
    if spec.kind == "hnsw" and spec.ef_search:
        index.hnsw.efSearch = spec.ef_search
    elif spec.kind == "ivf" and spec.nprobe:
        faiss.extract_index_ivf(index).nprobe = spec.nprobe


def build_segment_index(vectors: np.ndarray, spec: IndexSpec, *, seed: int = 0,
                        exclude: np.ndarray | None = None, progress: Progress | None = None) -> faiss.Index:
    """Build `spec`'s index over a segment's vectors; FAISS id = row position.

    IVF indexes are trained first on a seeded sample of `train_size(n, nlist)` rows (autofaiss's
    rule: min(100 * nlist, n)), with `KMEANS_NITER` spherical k-means iterations (two-level from
    `TWO_LEVEL_MIN_NLIST` lists). HNSW construction runs on FAISS's threads, so the graph (not
    its quality) can differ between runs.

    Args:
        vectors: `(n, d)` float16/float32, rows L2-normalised; may be an `np.memmap`.
        spec: from `choose_spec` (its search parameter may still be unset).
        seed: seeds the training sample and k-means.
        exclude: positions to leave out, for `tune`'s held-out queries; `add_positions` adds them
            afterwards. Until then an HNSW index numbers its rows in insertion order (the k-th
            row not excluded is id k); IVF ids are positions throughout. Flat indexes cannot
            leave rows out.
        progress: called as `progress("train", done, total)` (IVF) and `progress("add", done, n)`.

    Returns:
        The index: `IndexFlatIP`, `IndexHNSWFlat` or an `IndexIVF*`.

    Raises:
        AnnInputError: vectors of the wrong shape/dtype, a NaN/infinite or non-normalised row,
            bad `exclude`, or too few rows to train the IVF codes.
    """
    use_blas_for_batches()
    n, _ = check_vectors(vectors, spec.dim)
    seed = positive_int("seed", seed, minimum=0)
    skip = check_positions(exclude if exclude is not None else [], n, "exclude")
    if spec.kind == "flat" and skip.size:
        raise AnnInputError("a flat index numbers its rows implicitly and cannot leave rows out; "
                            "it needs no tuning, so build it without `exclude`")
    if skip.size >= n:
        raise AnnInputError(f"exclude leaves none of the {n} rows to index")
    index = new_index(spec)
    if spec.kind == "ivf":
        _train_ivf(index, spec, vectors, skip, seed, progress)
    _add_rows(index, spec, vectors, range(0, n, CHUNK_ROWS), skip, progress)
    return index


def add_positions(index: faiss.Index, spec: IndexSpec, vectors: np.ndarray, positions: np.ndarray) -> None:
    """Add the rows at `positions` left out by `build_segment_index(..., exclude=positions)`.

    IVF lists take them under their positions. HNSW numbers rows in insertion order, so the
    rows are appended and the graph is then renumbered (`IndexHNSW.permute_entries`) so that
    id = position again; the renumbering copies the vectors and links once (transiently
    `hnsw_bytes(n, ...)` more memory). FAISS does not check that the rows were left out.
    """
    n, _ = check_vectors(vectors, spec.dim)
    positions = check_positions(positions, n, "positions")
    if spec.kind == "flat":
        raise AnnInputError("a flat index cannot take rows at chosen positions; rebuild it")
    if index.ntotal + positions.size != n:
        raise AnnInputError(f"the index holds {index.ntotal} rows; adding {positions.size} would not make "
                            f"the segment's {n}: add exactly the rows that `exclude` left out")
    for start in range(0, positions.size, CHUNK_ROWS):
        rows = positions[start:start + CHUNK_ROWS]
        if spec.kind == "hnsw":
            index.add(float32_rows(vectors, rows))
        else:
            index.add_with_ids(float32_rows(vectors, rows), rows)
    if spec.kind == "hnsw" and positions.size:
        inserted = np.concatenate([insertion_order(n, positions), positions])  # id -> position
        new_to_old = np.empty(n, np.int64)
        new_to_old[inserted] = np.arange(n, dtype=np.int64)
        index.permute_entries(new_to_old)  # new id p holds what was id new_to_old[p]


def holdout_sample(n: int, sample: int, seed: int) -> np.ndarray:
    """Seeded held-out positions for tuning: `min(sample, n // 10)` of n rows (none below 10 rows), sorted."""
    n, sample = positive_int("n", n), positive_int("sample", sample, minimum=0)
    size = min(sample, n // 10)
    rng = np.random.default_rng(positive_int("seed", seed, minimum=0))
    return np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64) if size else np.empty(0, np.int64)


def _add_rows(index: faiss.Index, spec: IndexSpec, vectors: np.ndarray, starts: range, skip: np.ndarray,
              progress: Progress | None) -> None:
    n = len(vectors)
    total = n - skip.size
    done = 0
    if progress:
        progress("add", 0, total)
    for start in starts:
        stop = min(n, start + starts.step)
        x = float32_rows(vectors, slice(start, stop))
        if spec.kind == "flat":
            index.add(x)
            done += len(x)
        elif spec.kind == "hnsw":  # ids in insertion order: positions once `add_positions` has run
            keep = ~np.isin(np.arange(start, stop), skip[(skip >= start) & (skip < stop)], assume_unique=True)
            index.add(np.ascontiguousarray(x[keep]))
            done += int(keep.sum())
        else:
            ids = np.arange(start, stop, dtype=np.int64)
            keep = ~np.isin(ids, skip[(skip >= start) & (skip < stop)], assume_unique=True)
            index.add_with_ids(np.ascontiguousarray(x[keep]), ids[keep])
            done += int(keep.sum())
        if progress:
            progress("add", done, total)


def _train_ivf(index: faiss.Index, spec: IndexSpec, vectors: np.ndarray, skip: np.ndarray, seed: int,
               progress: Progress | None) -> None:
    n = len(vectors)
    rng = np.random.default_rng(seed)
    eligible = np.setdiff1d(np.arange(n, dtype=np.int64), skip, assume_unique=True) if skip.size else n
    size = train_size(n - skip.size, spec.nlist)
    if spec.codes.startswith("pq") and size < 256:
        raise AnnInputError(f"{spec.factory} needs at least 256 training rows for its PQ codebooks, "
                            f"got {size}: use sq8 or flat codes for so small a segment")
    if size < spec.nlist:
        raise AnnInputError(f"{spec.factory} needs at least {spec.nlist} training rows (one per list), "
                            f"got {size}: choose the spec for this segment's size with choose_spec")
    # Sorted positions read a memory-mapped file front to back.
    sample = np.sort(rng.choice(eligible, size=size, replace=False))
    if progress:
        progress("train", 0, size)
    xt = float32_rows(vectors, sample)
    ivf = faiss.extract_index_ivf(index)
    ivf.cp.seed = seed
    if spec.nlist >= TWO_LEVEL_MIN_NLIST:
        ivf.quantizer.add(_two_level_centroids(xt, spec.nlist, seed))
    index.train(xt)  # with a full quantizer FAISS trains only the codes (SQ ranges, PQ codebooks)
    if progress:
        progress("train", size, size)


def _two_level_centroids(xt: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    """`nlist` unit-norm centroids: k-means into sqrt(nlist) clusters, then each cluster into a
    share of `nlist` proportional to its size (FAISS's `contrib.clustering.two_level_clustering`,
    whose `train_ivf_index_with_2level` accepts only the L2 metric)."""
    d = xt.shape[1]
    n1 = int(round(np.sqrt(nlist)))
    coarse = faiss.Kmeans(d, n1, niter=KMEANS_NITER, seed=seed, spherical=True, max_points_per_centroid=1 << 30)
    coarse.train(xt)
    _, assign = coarse.index.search(xt, 1)
    assign = assign.ravel()
    sizes = np.bincount(assign, minlength=n1)
    shares = np.diff(np.concatenate([[0], np.cumsum(sizes) * nlist // len(xt)]))  # sums to nlist
    out = []
    for c in range(n1):
        members = xt[assign == c]
        k = int(shares[c])
        if k == 0:
            continue
        if len(members) <= k:  # as many lists as points: the points are the centroids (pad with copies)
            out.append(members[np.arange(k) % max(1, len(members))] if len(members) else
                       np.repeat(coarse.centroids[c:c + 1], k, axis=0))
            continue
        km = faiss.Kmeans(d, k, niter=KMEANS_NITER, seed=seed + c + 1, spherical=True,
                          max_points_per_centroid=1 << 30)
        km.train(members)
        out.append(km.centroids)
    centroids = np.ascontiguousarray(np.concatenate(out), dtype=np.float32)
    assert centroids.shape == (nlist, d), centroids.shape
    return centroids


def build_and_tune(vectors: np.ndarray, spec: IndexSpec, *, seed: int = 0, sample: int = 1000, k: int = 10,
                   labels: np.ndarray | None = None, threshold: float | None = None,
                   progress: Progress | None = None) -> tuple[faiss.Index, IndexSpec]:
    """Build a segment's index and tune its search parameter on held-out rows of its own vectors.

    For HNSW and IVF: `holdout_sample(n, sample, seed)` rows are left out of the build, used as
    queries by `tune` (the spec's objective against exact search over the other rows: by default
    identity agreement and floor recall, see `tune`), then added, so the finished index holds
    every row. A flat index is exact: it is built whole and reported with every figure 1.0.

    Args:
        vectors: `(n, d)` float16/float32, rows L2-normalised; may be an `np.memmap`.
        spec: from `choose_spec`.
        seed: seeds the held-out sample, the training sample and k-means.
        sample: held-out queries wanted (at most n // 10 are taken).
        k: the k of the recall that tuning measures.
        labels: `(n,)` int identity code per row (-1: none), for the identity agreement; None: rows
            count as identities of their own and the floor comes from their k-th neighbours.
        threshold: the index's calibrated threshold as a cosine (score rule); None: estimated.
        progress: see `build_segment_index`; tuning reports `progress("tune", step, steps)`.

    Returns:
        (index, the spec with its tuned search parameter and measured recall).
    """
    if spec.kind == "flat":
        index = build_segment_index(vectors, spec, seed=seed, progress=progress)
        return index, replace(spec, recall=1.0, recall_at_1=1.0, recall_k=k, target_met=True, agreement=1.0,
                              strict_agreement=1.0, floor_recall=1.0)
    n, _ = check_vectors(vectors, spec.dim)
    held = holdout_sample(n, sample, seed)
    index = build_segment_index(vectors, spec, seed=seed, exclude=held, progress=progress)
    tuned = tune(index, spec, vectors, held, k=k, labels=labels, threshold=threshold, progress=progress)
    if held.size:
        add_positions(index, tuned, vectors, held)
    apply_search_defaults(index, tuned)
    return index, tuned
