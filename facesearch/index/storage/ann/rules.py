"""Which index a segment gets: memory estimates per kind, the default budget, `choose_spec`.

The rules follow autofaiss (criteo/autofaiss, `external/optimize.py`, `get_optimal_index_keys_v2`,
`get_optimal_nb_clusters`, `get_optimal_quantization`; `external/metadata.py` for the sizes),
re-derived here because its wheel pins numpy<2. Where they differ, the difference was measured on
the project's 2-core machine (see each constant).
"""

from __future__ import annotations

import math
import os

from facesearch.embedder.core.errors import AnnInputError, MemoryBudgetError
from facesearch.index.storage.ann.checks import positive_int
from facesearch.index.storage.ann.spec import IndexSpec, codes_bytes

# Exact flat search while one query scans at most this many floats (20,480 x 128-d, 10 MiB):
# measured one thread, 128-d: flat p50 0.18 ms at 20k vectors (HNSW32 0.14 ms), 1.1 ms at 50k
# (HNSW32 0.18 ms), 2.2 ms at 100k; beyond ~20k the scan leaves the CPU caches and grows linearly.
# autofaiss's rule is flat below 1,000 and HNSW15 below 10,000; an exact index needs no tuning
# and no build, so we keep it while it costs a fraction of a millisecond.
FLAT_MAX_FLOATS = 20_480 * 128
# HNSW while it fits the budget (autofaiss's rule) *and* builds in reasonable time on 2 cores:
# HNSW32 (efConstruction 40) built 1M vectors in 169-400 s here (2 threads, machine shared with
# other jobs) and its cost grows a little faster than n, so 2M take ~6-15 min; IVF16384,SQ8 built
# 10M in 15 min. Asked for explicitly (`kind="hnsw"`), HNSW ignores this cap.
HNSW_MAX_N = 2_000_000
HNSW_MAX_M = 32  # autofaiss's rule: M = min(32, what fits), and HNSW only if M >= 8
HNSW_MIN_M = 8
HNSW_EF_CONSTRUCTION = 40  # FAISS's default, which autofaiss keeps
# autofaiss's rule: IVF lists stay float32 ("IVF<n>,Flat") only below 1M vectors; above, codes
# are quantised. Our codes are re-ranked exactly from the raw vectors, so quantised lists lose
# nothing in the final scores and scan a quarter of the bytes (sq8).
IVF_FLAT_MAX_N = 1_000_000
# autofaiss's rule gives 2^16 lists from 10M vectors; on 2 cores assigning 10M vectors to 2^14
# centroids already took 776 s of a 881-s build, and 2^16 would take four times as long, so we
# stop at 2^14 (10M rows: p50 9-12 ms at recall@10 0.997, 1.4 ms at recall@1 0.99).
IVF_MAX_NLIST = 2**14
IVF_MIN_POINTS_PER_LIST = 39  # below this FAISS's k-means warns (and lists are poorly placed)
PQ_MIN_TRAIN = 256 * IVF_MIN_POINTS_PER_LIST  # 8-bit PQ codebooks have 256 centroids each
PQ_CHOICES = (256, 128, 64, 48, 32, 24, 16, 8, 4)  # autofaiss's list of PQ code sizes, largest first
RERANK = {"flat": 1, "sq8": 2, "pq": 8}  # candidates per wanted neighbour, re-scored exactly
BUDGET_SHARE = 0.25
_MIB = 1 << 20


def hnsw_bytes(n: int, d: int, m: int) -> int:
    """Resident bytes of an `IndexHNSWFlat(d, m)` holding n vectors.

    Counts the float32 vectors (4d), level-0 links (2m int32) plus ~1 upper-level link on
    average (4), the per-node level and offset (12): n * (4d + 8m + 16). autofaiss's estimate
    is n * 4 * (d + 2m).
    """
    return n * (4 * d + 8 * m + 16)


def ivf_bytes(n: int, d: int, nlist: int, codes: str) -> int:
    """Resident bytes of an IVF index with a flat coarse quantizer holding n vectors.

    Counts per vector its code (`flat` 4d, `sq8` d, `pq<m>` m bytes) and its int64 id in the
    list; the centroids (nlist * 4d); per list ~48 bytes of list headers; for PQ the codebooks
    (256 * 4d). Same terms as autofaiss's `IndexMetadata.estimated_index_size_in_bytes`.
    """
    codebooks = 256 * 4 * d if codes.startswith("pq") else 0
    return n * (codes_bytes(codes, d) + 8) + nlist * (4 * d + 48) + codebooks


def flat_bytes(n: int, d: int) -> int:
    """Resident bytes of an `IndexFlatIP` holding n vectors: n * 4d."""
    return n * 4 * d


def estimate_memory(spec: IndexSpec, n: int) -> int:
    """Resident bytes of `spec`'s index over n vectors, while it is searched.

    Not counted: the segment's raw-vector file (memory-mapped; a search reads only the rows it
    re-ranks) and per-query scratch. An index read with `mmap=True` keeps its largest arrays in
    the page cache instead of the heap, but a fast search still needs them resident, so they are
    counted. Building needs in addition the IVF training sample (`train_size(...) * 4d`) and one
    chunk of converted vectors.
    """
    if spec.kind == "flat":
        return flat_bytes(n, spec.dim)
    if spec.kind == "hnsw":
        return hnsw_bytes(n, spec.dim, spec.hnsw_m)
    return ivf_bytes(n, spec.dim, spec.nlist, spec.codes)


def default_memory_budget() -> int:
    """A quarter of this machine's memory (or of the container's limit, if lower), in bytes.

    Why a quarter: the search index shares the machine with the embedder and its runtime, the
    metadata store, and the page cache that holds the raw vectors re-ranking reads; and while a
    merge builds a new segment the segments it replaces are still searched, so two copies live
    for a while. Half the memory for all indexes, halved again for the merge, is a quarter.
    """
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    # A container's limit: cgroup v2 ("max" when unlimited), then v1 (a huge number when unlimited).
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    return int(total * BUDGET_SHARE)


def ivf_nlist(n: int) -> int:
    """Number of IVF lists for n vectors.

    autofaiss's rule: 4 * sqrt(n) rounded to a power of two below 1M vectors, 2^14 from 1M and
    2^16 from 10M; here capped at `IVF_MAX_NLIST` (2-core build time), and at n / 39 (rounded
    down to a power of two) so that k-means has enough points per list.
    """
    if n < 1_000_000:
        nlist = 2 ** round(math.log2(4 * math.sqrt(n)))
    elif n < 10_000_000:
        nlist = 2**14
    else:
        nlist = 2**16
    by_points = 2 ** int(math.log2(max(1, n // IVF_MIN_POINTS_PER_LIST)))
    return int(max(1, min(nlist, IVF_MAX_NLIST, by_points)))


def train_size(n: int, nlist: int) -> int:
    """autofaiss's rule: train on min(100 * nlist, n) vectors (FAISS wants 39-256 per list)."""
    return min(100 * nlist, n)


def choose_spec(n: int, d: int, memory_budget_bytes: int, kind: str = "auto", *,
                target_recall: float = 0.99) -> IndexSpec:
    """Choose a segment index for n d-dimensional vectors within a memory budget.

    `auto`: exact flat while n * d <= `FLAT_MAX_FLOATS`; HNSW with M = min(32, what fits) if
    M >= 8 fits and n <= `HNSW_MAX_N`; otherwise IVF with `ivf_nlist(n)` lists and the
    richest codes that fit: float32 lists below `IVF_FLAT_MAX_N` vectors, then SQ8, then the
    largest PQ code size of autofaiss's list that divides d and fits. The search parameter is
    left for `tune` to set.

    Args:
        n: vectors in the segment (>= 1).
        d: their dimension.
        memory_budget_bytes: what this segment's index may take (see `estimate_memory`).
        kind: "auto", "flat", "hnsw" or "ivf" (`build-index --index-type`).
        target_recall: the floor recall (objective "decisions", the default) or recall@10 that
            `tune` will aim for.

    Returns:
        An untuned `IndexSpec` (flat ones are exact: recall 1.0).

    Raises:
        AnnInputError: bad n, d, budget or kind.
        MemoryBudgetError: nothing of the asked kind fits the budget.
    """
    n, d, memory_budget_bytes = (positive_int(name, value) for name, value in (
        ("n", n), ("d", d), ("memory_budget_bytes", memory_budget_bytes)))
    if kind not in ("auto", "flat", "hnsw", "ivf"):
        raise AnnInputError(f"index type must be auto, flat, hnsw or ivf, got {kind!r}")
    if not (isinstance(target_recall, (int, float)) and 0.0 < target_recall <= 1.0):
        raise AnnInputError(f"target_recall must be in (0, 1], got {target_recall!r}")
    budget = memory_budget_bytes
    flat_fits = flat_bytes(n, d) <= budget
    if kind == "flat" or (kind == "auto" and n * d <= FLAT_MAX_FLOATS and flat_fits):
        if not flat_fits:
            raise _over_budget("a flat index", n, d, flat_bytes(n, d), budget)
        return IndexSpec("flat", d, target_recall=target_recall, recall=1.0, recall_at_1=1.0,
                         target_met=True, agreement=1.0, strict_agreement=1.0, floor_recall=1.0)
    if kind == "hnsw" or (kind == "auto" and n <= HNSW_MAX_N):
        # autofaiss's rule: M = floor((budget / (4n) - d) / 2), HNSW if M >= 8, at most 32.
        m = min(HNSW_MAX_M, (budget // n - 4 * d - 16) // 8)
        if m >= HNSW_MIN_M:
            return IndexSpec("hnsw", d, hnsw_m=int(m), ef_construction=HNSW_EF_CONSTRUCTION,
                             target_recall=target_recall)
        if kind == "hnsw":
            raise _over_budget("HNSW (M=8)", n, d, hnsw_bytes(n, d, HNSW_MIN_M), budget)
    return _choose_ivf(n, d, budget, target_recall)


def _choose_ivf(n: int, d: int, budget: int, target_recall: float) -> IndexSpec:
    nlist = ivf_nlist(n)
    options = ["flat"] if n < IVF_FLAT_MAX_N else []
    options.append("sq8")
    if train_size(n, nlist) >= PQ_MIN_TRAIN:
        options += [f"pq{m}" for m in PQ_CHOICES if m < d and d % m == 0]
    for codes in options:
        if ivf_bytes(n, d, nlist, codes) <= budget:
            rerank = RERANK["pq" if codes.startswith("pq") else codes]
            return IndexSpec("ivf", d, nlist=nlist, codes=codes, rerank=rerank, target_recall=target_recall)
    smallest = options[-1]
    raise _over_budget(f"IVF{nlist},{smallest}", n, d, ivf_bytes(n, d, nlist, smallest), budget)


def _over_budget(what: str, n: int, d: int, needed: int, budget: int) -> MemoryBudgetError:
    return MemoryBudgetError(
        f"{what} for {n:,} {d}-d vectors needs about {needed / _MIB:,.1f} MiB; the memory budget is "
        f"{budget / _MIB:,.1f} MiB: raise --memory-budget, or use --index-type auto to let a "
        "smaller index be chosen")
