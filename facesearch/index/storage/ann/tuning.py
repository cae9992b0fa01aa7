"""Tuning a segment's search parameter on held-out rows: the verdict's inputs (or recall@k) against exact
search, doubling ladder then bisection."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import faiss
import numpy as np

from facesearch.embedder.core.errors import AnnInputError
from facesearch.index.storage.ann import decisions
from facesearch.index.storage.ann.checks import (
    CHUNK_ROWS,
    check_positions,
    check_queries,
    check_vectors,
    float32_rows,
    insertion_order,
    positive_int,
)
from facesearch.index.storage.ann.searching import search
from facesearch.index.storage.ann.spec import IndexSpec

log = logging.getLogger(__name__)

EF_SEARCH_START = 16  # autofaiss's rule: efSearch from 16 upwards
EF_SEARCH_MAX = 4096  # autofaiss tries up to 2^14; here 4096 already costs tens of ms at 1M
SCORE_TOLERANCE = 1e-5  # a returned row scoring within this of the k-th exact score counts as found
RERANK_MAX = 64  # lossy codes: candidates per wanted neighbour that tuning may raise re-ranking to
PLATEAU = 0.002  # a doubling that gains less recall than this has stalled
# Bisections between the rung that missed the target and the one that met it: the value lands within
# 1/8 of a doubling of the smallest that meets it. At 1M faces (HNSW32) recall@10 was 0.989 at
# efSearch 512, so the ladder alone took 1024 and doubled the query time for 0.001 of recall.
REFINE_STEPS = 3


def exact_knn(vectors: np.ndarray, queries: np.ndarray, k: int, *,
              exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k over stored vectors, read `CHUNK_ROWS` rows at a time.

    Args:
        vectors: `(n, d)` float16/float32/float64 (memmap fine), rows L2-normalised.
        queries: `(m, d)` float.
        k: neighbours wanted.
        exclude: positions never returned (e.g. the held-out queries themselves).

    Returns:
        scores `(m, k)` float32 and positions `(m, k)` int64, best first (-inf / -1 padding).
    """
    n, d = check_vectors(vectors)
    q = check_queries(queries, d)
    k = positive_int("k", k)
    skip = check_positions(exclude if exclude is not None else [], n, "exclude")
    heap = faiss.ResultHeap(len(q), k, keep_max=True)
    for start in range(0, n, CHUNK_ROWS):
        stop = min(n, start + CHUNK_ROWS)
        xb = float32_rows(vectors, slice(start, stop))
        ids = np.arange(start, stop, dtype=np.int64)
        keep = ~np.isin(ids, skip[(skip >= start) & (skip < stop)], assume_unique=True)
        if not keep.all():
            xb, ids = np.ascontiguousarray(xb[keep]), ids[keep]
        if len(ids):
            scores, at = faiss.knn(q, xb, min(k, len(ids)), metric=faiss.METRIC_INNER_PRODUCT)
            heap.add_result(scores, np.where(at >= 0, ids[np.maximum(at, 0)], -1))
    heap.finalize()
    positions = heap.I.copy()
    scores = np.where(positions >= 0, heap.D, -np.inf).astype(np.float32)
    return scores, positions


def recall_at(found: np.ndarray, queries: np.ndarray, vectors: np.ndarray, truth_scores: np.ndarray,
              k: int) -> float:
    """Share of the exact top-k that `found` holds, ties counted as found.

    A returned position counts when its exact score reaches the k-th exact score (minus
    `SCORE_TOLERANCE`), so equal vectors (the same photo twice) never count as misses.

    Args:
        found: `(m, >=k)` int64 positions from an approximate search (-1 for none).
        queries: `(m, d)` float32.
        vectors: the stored vectors.
        truth_scores: `(m, >=k)` exact scores, best first (-inf padding when fewer exist).
        k: the k of the recall.
    """
    found = found[:, :k]
    valid = found >= 0
    exact = np.full(found.shape, -np.inf, np.float32)
    rows = np.asarray(vectors[found[valid]], dtype=np.float32)
    exact[valid] = np.einsum("ij,ij->i", queries[np.nonzero(valid)[0]], rows)
    wanted = np.isfinite(truth_scores[:, :k]).sum(axis=1)  # fewer than k rows may exist
    kth = truth_scores[np.arange(len(found)), np.maximum(wanted - 1, 0)]
    hits = np.minimum((valid & (exact >= kth[:, None] - SCORE_TOLERANCE)).sum(axis=1), wanted)
    return float(hits.sum() / max(1, wanted.sum()))


def ladder(spec: IndexSpec, depth: int = 1) -> list[int]:
    """Values of the search parameter that tuning tries, doubling: efSearch 16..4096, nprobe 1..nlist.

    HNSW returns at most efSearch neighbours, so a search for `depth` of them runs at efSearch >=
    depth whatever is set: the rungs below it are raised to it (and the value recorded is the one
    searched with).
    """
    start, stop = (EF_SEARCH_START, EF_SEARCH_MAX) if spec.kind == "hnsw" else (1, spec.nlist)
    values = []
    value = start
    while value < stop:
        values.append(value)
        value *= 2
    values.append(stop)
    if spec.kind == "hnsw":
        values = sorted({max(v, min(depth, stop)) for v in values})
    return values


@dataclass(frozen=True)
class Measurement:
    """What one setting of the search parameter gave on the held-out queries (see `tune`)."""

    recall: float  # recall@k over faces
    recall_at_1: float
    agreement: float  # top and runner-up identities where they score at or above the floor
    strict_agreement: float  # top and runner-up identities wherever they score
    floor_recall: float  # faces at or above the floor that were found

    def meets(self, objective: str, target_recall: float, target_agreement: float) -> bool:
        if objective == "recall":
            return self.recall >= target_recall
        return self.agreement >= target_agreement and self.floor_recall >= target_recall

    def gain_measure(self, objective: str) -> float:
        """The figure whose stalling says more candidates (re-ranking) are needed, not more lists."""
        return self.recall if objective == "recall" else min(self.floor_recall, self.agreement)


def tune(index: faiss.Index, spec: IndexSpec, vectors: np.ndarray, holdout: np.ndarray, *,
         target_recall: float | None = None, k: int = 10, labels: np.ndarray | None = None,
         threshold: float | None = None, progress=None) -> IndexSpec:
    """Raise efSearch / nprobe along a doubling ladder until the spec's objective is met, then bisect.

    Objective "decisions" (the default): the verdict's inputs agree with exact search on at least
    `spec.target_agreement` of the held-out queries (`decisions.agreement`: top and runner-up
    identities where they score at or above the floor; with labels each row counts twice, as
    itself and as a stranger with its own identity left out) and at least `target_recall` of the faces
    scoring at or above the floor are found (`decisions.floor_recall`). The floor is the
    threshold minus a margin (`decisions.estimate_floor`): the index's calibrated threshold when
    given, else one estimated from the held-out rows' best other-identity scores (their k-th
    neighbours' without labels), which the spec records in `floor_source`. Objective "recall":
    recall@k over faces reaches `target_recall`, as before objectives existed. Recall@k and
    recall@1 are reported under either.

    Once a rung meets the objective after the one below it missed, `REFINE_STEPS` bisections between
    the two keep the smallest value that still meets it. For lossy codes (sq8, pq) the re-ranking
    factor doubles too (up to `RERANK_MAX`) when the ladder stalls (a doubling gains less than
    `PLATEAU`) or ends below the target.

    The queries are the held-out rows `holdout` of the segment's own vectors, which the index
    must not contain (build it with `build_segment_index(..., exclude=holdout)`; a query that is
    itself in the index finds itself trivially, which would overstate recall). They are measured on
    the full search path (filter-free, with re-ranking for lossy codes; `decisions.DEPTH` neighbours
    for "decisions", k for "recall") against exact search over the indexed rows. If even the last
    rung misses, the spec says so (`target_met=False`, `note`, figures as measured there) and a
    warning is logged.

    Args:
        index: an HNSW or IVF index over every row except `holdout`.
        spec: its spec.
        vectors: the segment's `(n, d)` vectors (memmap fine).
        holdout: positions of the query rows.
        target_recall: floor recall ("decisions") or recall@k ("recall") to reach; None:
            `spec.target_recall`.
        k: the k of the recall.
        labels: `(n,)` int identity code per position (-1: no identity); None: none known.
        threshold: the index's calibrated threshold as a cosine (score rule); None: estimate it.
        progress: called as `progress("tune", rung, rungs)`.

    Returns:
        `spec` with `ef_search`/`nprobe` (and `rerank`) and every measured field set.

    Raises:
        AnnInputError: a flat spec, or an index that holds held-out rows or lacks others.
    """
    if spec.kind == "flat":
        raise AnnInputError("a flat index is exact and has nothing to tune")
    n, _ = check_vectors(vectors, spec.dim)
    held = check_positions(holdout, n, "holdout")
    k = positive_int("k", k)
    target = spec.target_recall if target_recall is None else float(target_recall)
    if not 0.0 < target <= 1.0:
        raise AnnInputError(f"target_recall must be in (0, 1], got {target}")
    if index.ntotal != n - held.size:
        raise AnnInputError(f"the index holds {index.ntotal} rows; tuning needs the {n - held.size} rows "
                            "outside the held-out sample: build with exclude=holdout")
    depth = max(k, decisions.DEPTH) if spec.objective == "decisions" else k
    rungs = ladder(spec, depth)
    if held.size == 0:  # too few rows to hold any out: search exhaustively rather than guess
        log.warning("segment of %d rows too small to tune %s; using %s", n, spec.factory, rungs[-1])
        return replace(spec.with_search(rungs[-1]), target_recall=target, recall_k=k, tune_sample=0,
                       recall=None, recall_at_1=None, target_met=None,
                       note=f"too few rows to hold any out: {spec.search_parameter[0]} {rungs[-1]}, the largest")
    reference = _Reference.measure_exact(vectors, held, spec, depth, k, labels, threshold)

    def measure(trial: IndexSpec) -> Measurement:
        return reference.compare(index, trial, vectors)

    def meets(m: Measurement) -> bool:
        return m.meets(spec.objective, target, spec.target_agreement)

    step, trial, previous, missed = 0, spec, None, None
    tried: list[tuple[IndexSpec, Measurement]] = []
    while True:
        if progress:
            progress("tune", step, len(rungs))
        trial = trial.with_search(rungs[step])
        measured = measure(trial)
        tried.append((trial, measured))
        if meets(measured):
            break
        # Lossy codes plateau below the target when too few candidates are re-ranked: more
        # lists do not help then, more candidates do (PQ16, 100k rows: recall@10 0.84 with 8x
        # candidates, 0.93 with 32x, at any nprobe from 128).
        gain = measured.gain_measure(spec.objective)
        stalled = step == len(rungs) - 1 or (previous is not None and gain - previous < PLATEAU)
        if spec.lossy and stalled and trial.rerank < RERANK_MAX:
            trial, previous, missed = replace(trial, rerank=trial.rerank * 2), None, None
            continue
        if step == len(rungs) - 1:
            break
        step, previous, missed = step + 1, gain, rungs[step]
    met = meets(measured)
    if met and missed is not None:
        trial, measured = _bisect_down(measure, meets, trial, measured, missed)
    note = None
    if not met:
        kept, kept_measured = _cheapest_alike(tried, trial, measured, spec.objective)
        note = _shortfall(spec, trial, measured, kept, kept_measured, target)
        trial, measured = kept, kept_measured
    if note:
        log.warning("%s: %s", spec.factory, note)
    if progress:
        progress("tune", len(rungs), len(rungs))
    return replace(trial, target_recall=target, recall=round(measured.recall, 6),
                   recall_at_1=round(measured.recall_at_1, 6), recall_k=k, tune_sample=int(held.size),
                   target_met=met, agreement=round(measured.agreement, 6),
                   strict_agreement=round(measured.strict_agreement, 6), floor=round(reference.floor, 6),
                   floor_recall=round(measured.floor_recall, 6), floor_source=reference.source, note=note)


@dataclass(frozen=True)
class _Reference:
    """Exact search's answers for the held-out queries, and how an approximate search is compared with them."""

    queries: np.ndarray  # (m, d) float32
    order: np.ndarray | None  # HNSW: FAISS id -> position until the held-out rows are added
    codes: np.ndarray  # (n,) identity code per position (`decisions.position_labels`)
    views: list  # per view, the identity left out of each row's ranking: None (itself), own codes (stranger)
    exact_tops: list  # per view, `decisions.TopTwo` of exact search
    exact_scores: np.ndarray  # (m, max(k, DEPTH)), best first
    depth: int  # neighbours the approximate search is asked for
    k: int
    floor: float
    source: str  # `FLOOR_SOURCES`

    @classmethod
    def measure_exact(cls, vectors: np.ndarray, held: np.ndarray, spec: IndexSpec, depth: int, k: int,
                      labels: np.ndarray | None, threshold: float | None) -> _Reference:
        n = len(vectors)
        queries = float32_rows(vectors, held)
        order = insertion_order(n, held) if spec.kind == "hnsw" else None
        codes = decisions.position_labels(labels, n)
        exact_scores, exact_positions = exact_knn(vectors, queries, max(k, decisions.DEPTH), exclude=held)
        strangers = decisions.stranger_scores(exact_scores, exact_positions, codes,
                                              codes[held] if labels is not None else None)
        floor, _ = decisions.estimate_floor(strangers, threshold)
        source = "calibration" if threshold is not None else "strangers" if labels is not None else "neighbours"
        # Each held-out row is searched as itself and, with its own identity left out, as a stranger.
        views = [None] if labels is None else [None, codes[held]]
        exact_tops = [decisions.top_two(exact_scores, exact_positions, codes, own) for own in views]
        return cls(queries, order, codes, views, exact_tops, exact_scores, depth, k, floor, source)

    def compare(self, index: faiss.Index, trial: IndexSpec, vectors: np.ndarray) -> Measurement:
        """Search the queries with `trial`'s settings and measure every figure against exact search."""
        scores, found = search(index, trial, self.queries, self.depth, raw=vectors)
        if self.order is not None:
            found = np.where(found >= 0, self.order[np.maximum(found, 0)], -1)
        shares = np.array([decisions.agreement(decisions.top_two(scores, found, self.codes, own), exact, self.floor)
                           for own, exact in zip(self.views, self.exact_tops)]).mean(axis=0)
        truth = self.exact_scores[:, :self.k]
        return Measurement(recall_at(found, self.queries, vectors, truth, self.k),
                           recall_at(found, self.queries, vectors, truth, 1), float(shares[0]), float(shares[1]),
                           decisions.floor_recall(scores, self.exact_scores, self.floor))


def _cheapest_alike(tried: list[tuple[IndexSpec, Measurement]], last: IndexSpec, measured: Measurement,
                    objective: str) -> tuple[IndexSpec, Measurement]:
    """Where the objective is out of reach: the smallest value tried (at the last re-ranking) whose figures
    come within `PLATEAU` of the last rung's, the most that tuning could reach.

    At 1M ArcFace-like faces identity agreement reached 0.998 at efSearch 4096 and no higher: the
    largest rung bought a few thousandths of agreement for several times the query time.
    """
    best = measured.gain_measure(objective)
    for trial, m in sorted(((t, m) for t, m in tried if t.rerank == last.rerank),
                           key=lambda pair: pair[0].search_parameter[1]):
        if m.gain_measure(objective) >= best - PLATEAU:
            return trial, m
    return last, measured


def _shortfall(spec: IndexSpec, trial: IndexSpec, m: Measurement, kept: IndexSpec, kept_m: Measurement,
               target: float) -> str:
    """Why the objective was missed at the largest value tried, and what was kept instead (the spec's `note`)."""
    name, value = trial.search_parameter
    name = {"ef_search": "efSearch"}.get(name, name)
    if spec.objective == "recall":
        missed = f"recall@{spec.recall_k} {m.recall:.4f} < {target:g}"
    else:
        parts = []
        if m.agreement < spec.target_agreement:
            parts.append(f"identity agreement {m.agreement:.4f} < {spec.target_agreement:g}")
        if m.floor_recall < target:
            parts.append(f"floor recall {m.floor_recall:.4f} < {target:g}")
        missed = " and ".join(parts)
    rerank = f" (re-rank x{trial.rerank})" if spec.lossy else ""
    if kept.search_parameter[1] == value:
        return f"{missed} at {name} {value}{rerank}, the largest tried: kept it"
    figures = (f"recall@{spec.recall_k} {kept_m.recall:.4f}" if spec.objective == "recall" else
               f"identity agreement {kept_m.agreement:.4f}, floor recall {kept_m.floor_recall:.4f}")
    return (f"{missed} at {name} {value}{rerank}, the largest tried; kept {name} {kept.search_parameter[1]}, "
            f"the smallest within {PLATEAU:g} of it ({figures})")


def _bisect_down(measure, meets, trial: IndexSpec, measured: Measurement,
                 missed: int) -> tuple[IndexSpec, Measurement]:
    """The smallest value in (`missed`, trial's value] meeting the objective, by `REFINE_STEPS` bisections.

    `missed` is a value that was measured below the objective at trial's re-ranking; what is
    measured is taken to rise with the search parameter, as it does for both HNSW and IVF.
    """
    low, high = missed, trial.search_parameter[1]
    for _ in range(REFINE_STEPS):
        middle = (low + high) // 2
        if middle in (low, high):
            break
        candidate = trial.with_search(middle)
        candidate_measured = measure(candidate)
        if meets(candidate_measured):
            high, trial, measured = middle, candidate, candidate_measured
        else:
            low = middle
    return trial, measured
