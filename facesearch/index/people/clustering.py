"""Faces without an identity grouped into people: a FAISS k-NN graph, then constrained average linkage.

Interface (stable; the people plumbing calls these):

    ClusterParams(threshold, k=20, min_faces=2)
    threshold_for(card_thresholds, vectors=None, *, seed=0) -> float
    knn_graph(vectors, k) -> (scores (n, k) float32, neighbours (n, k) int64, -1 where fewer)
    cluster(vectors, photo_ids, params, *, seed=0, fixed=None, apart=None) -> labels (n,) int64
    assign(new_vectors, new_photo_ids, vectors, photo_ids, labels, params) -> labels (m,) int64
    suggest(vectors, labels, named_vectors, named_identities, threshold) -> list[Suggestion]

The algorithm (docs/people.md, "How faces are grouped"):

1. Each face's `k` nearest faces by inner product (exact FAISS flat search up to `EXACT_MAX` faces,
   HNSW above, `_hnsw_knn`), made symmetric: the edge set of a sparse graph, every edge with its score.
2. Two faces of one photo (and any pair in `apart`) get a cannot-link edge of score -inf.
3. Average linkage on that graph: the linkage of two groups is the mean score of the graph's edges
   between them (edges absent from the graph are unknown, not counted). Groups merge while their
   linkage is at least `threshold`, in rounds: every group whose best neighbour also has it as its
   best neighbour merges with it (reciprocal nearest neighbours; with a reducible linkage these
   are exactly the merges greedy agglomeration makes, and every round makes at least one). A
   cannot-link edge makes a linkage -inf, so no group ever holds two faces of one photo.
4. Groups of at least `min_faces` faces get labels 0, 1, ... biggest first (ties: the group whose
   first face comes first); the rest are -1 (unclustered).

Average linkage resists the chaining that single linkage and Chinese whispers suffer from on large
collections: a group joins another only when its faces match the other's faces *on average*, not
through one lucky pair. Nothing is quadratic in n: the graph has at most n * k edges and each
round is a few sorts of the edge list.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facesearch.embedder.core.errors import FaceSearchError

EXACT_MAX = 20_000  # up to this many faces the k-NN graph comes from an exact flat search
CARD_KEYS = ("far_1e-3", "best_accuracy")  # the card's calibrated thresholds, in the order threshold_for takes them
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 40, 48  # above EXACT_MAX (`_hnsw_knn`)


class ClusterInputError(FaceSearchError, ValueError):
    """Vectors, photo ids, pinned labels or parameters that clustering cannot use."""


@dataclass(frozen=True)
class ClusterParams:
    """How faces are grouped.

    Attributes:
        threshold: the average-linkage score (inner product of unit vectors) two groups need to
            merge; from `threshold_for` (the model's pair calibration), never a constant.
        k: neighbours per face in the graph. More neighbours give big groups more edges to
            average over (better recall for people with many photos) at n * k memory.
        min_faces: a group smaller than this is left unclustered (-1); 2 = any matched pair.
        single: the linkage two single faces need (a collection compares each face with every
            other, so one pair's score is weaker evidence than a group's mean); groups of p and q
            faces need `threshold + (single - threshold) / (p * q)`. None: `cluster` estimates
            it from the collection (`pair_rule`).
        gap: two single faces also pair when their score reaches `threshold` and stands out by
            `gap` from both faces' typical neighbour score (ranks 2-10). None: estimated.
        far: the share of stranger pairs that reach `threshold` (1e-3 for the card's `far_1e-3`), when
            known. A face meets about n * far strangers above `threshold` among n faces, so `single`
            applies in full from n * far = 1 and in proportion below (`single_for`): a collection of
            a few dozen faces does not need it. None: `single` applies in full at any size.
    """

    threshold: float
    k: int = 20
    min_faces: int = 2
    single: float | None = None
    gap: float | None = None
    far: float | None = None

    def __post_init__(self) -> None:
        if not np.isfinite(self.threshold) or not -1.0 <= self.threshold <= 1.0:
            raise ClusterInputError(f"threshold {self.threshold!r} is not a score in [-1, 1]")
        if self.k < 1:
            raise ClusterInputError(f"k must be at least 1 (got {self.k})")
        if self.single is not None and not (np.isfinite(self.single) and -1.0 <= self.single <= 1.0):
            raise ClusterInputError(f"single {self.single!r} is not a score in [-1, 1]")
        if self.gap is not None and not (np.isfinite(self.gap) and self.gap >= 0):
            raise ClusterInputError(f"gap {self.gap!r} must be a score difference >= 0")
        if self.min_faces < 2:
            raise ClusterInputError(f"min_faces must be at least 2 (got {self.min_faces}): a group has two faces")
        if self.far is not None and not (np.isfinite(self.far) and 0 < self.far <= 1):
            raise ClusterInputError(f"far {self.far!r} must be a rate in (0, 1]")

    def single_for(self, faces: int, single: float | None = None) -> float | None:
        """The two-single-faces linkage in a collection of `faces` faces (`single`, or the one given,
        scaled by the strangers a face meets above `threshold` there: see `far`)."""
        single = self.single if single is None else single
        if single is None or self.far is None:
            return single
        return self.threshold + (max(single, self.threshold) - self.threshold) * min(1.0, faces * self.far)


@dataclass(frozen=True)
class Suggestion:
    """A group that looks like a named identity: offered to the user, never merged by itself."""

    group: int
    identity: str
    score: float  # mean inner product of the group's faces with that identity's faces

    def to_dict(self) -> dict:
        return {"group": self.group, "identity": self.identity, "score": round(self.score, 4)}


# ---------------------------------------------------------------------------------------------
# The threshold


def threshold_for(card_thresholds: dict | None, vectors: np.ndarray | None = None, *, seed: int = 0) -> float:
    """The linking threshold for a model: from its card's pair calibration, else from the vectors.

    Rule: the card's `far_1e-3` threshold (the pair score that one stranger pair in a thousand
    reaches), else its `best_accuracy` threshold, is the average linkage two groups need: two
    groups merge when their faces, on average, match as well as a pair the model accepts at that
    operating point. A collection compares every face with many others, so the stricter of the two
    calibrated points comes first. Without a card calibration the threshold comes from the
    collection's own scores: each face's nearest neighbours' scores are bimodal (same-person
    neighbours high, others lower) and Otsu's split of their histogram is the threshold.

    Args:
        card_thresholds: a model card's `thresholds` (e.g. {"best_accuracy": 0.903, ...}) or None.
        vectors: `(n, d)` float32, rows L2-normalised; used only when the card has no calibration.
        seed: picks the sample of faces whose neighbours are scored (at most 2,000).

    Raises:
        ClusterInputError: neither a calibrated card nor at least 10 vectors to estimate from.
    """
    for name in CARD_KEYS:
        if card_thresholds and name in card_thresholds:
            value = float(card_thresholds[name])
            if not -1.0 <= value <= 1.0:
                raise ClusterInputError(f"model card threshold {name}={value!r} is not a score in [-1, 1]")
            return value
    if vectors is None or len(vectors) < 10:
        raise ClusterInputError("the model card has no pair calibration ('best_accuracy' in its thresholds) and "
                                "there are fewer than 10 faces to estimate a threshold from: run "
                                "`facesearch calibrate` on the model or add more photos")
    x = _check_vectors(vectors)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(x), min(len(x), 2_000), replace=False))
    k = min(10, len(x) - 1)
    scores = _search(x, x[sample], k + 1)[0][:, 1:]  # drop each face's match with itself
    return otsu(scores.ravel())


def card_far(card_thresholds: dict | None) -> float | None:
    """The stranger-pair rate of the threshold `threshold_for` takes from a card: 1e-3 for `far_1e-3`;
    None when the threshold is not a false-accept point (`best_accuracy`, or none)."""
    for name in CARD_KEYS:
        if card_thresholds and name in card_thresholds:
            try:
                return float(name[len("far_"):]) if name.startswith("far_") else None
            except ValueError:
                return None
    return None


def otsu(scores: np.ndarray, bins: int = 512) -> float:
    """Otsu's threshold of a set of scores: the split of their histogram that maximises the
    between-class variance (Otsu 1979), the middle of the best splits where several tie.
    Deterministic; `(m,)` float -> float."""
    s = np.asarray(scores, np.float64)
    s = s[np.isfinite(s)]
    lo, hi = float(s.min()), float(s.max())
    if hi - lo < 1e-9:
        return lo
    counts, edges = np.histogram(s, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(counts)
    w1 = w0[-1] - w0
    m0 = np.cumsum(counts * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = (w0 * w1 * (mean0 - mean1) ** 2)[:-1]
    # Splits anywhere in an empty stretch between the modes score alike: take that stretch's middle.
    top = np.flatnonzero(between >= between.max() * (1 - 1e-12))
    return float((edges[top[0] + 1] + edges[top[-1] + 1]) / 2)


BACKGROUND_RANKS = slice(1, 10)  # a face's typical neighbour score: the mean of its 2nd..10th


def background_of(scores: np.ndarray) -> np.ndarray:
    """A face's typical neighbour score: the mean of its 2nd..10th best scores (`(n, k)` -> `(n,)`;
    +inf where k < 2, which turns the gap rule off)."""
    part = np.asarray(scores, np.float64)[:, BACKGROUND_RANKS]
    finite = np.isfinite(part)
    count = finite.sum(axis=1)
    total = np.where(finite, part, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.inf)


def pair_rule(scores: np.ndarray, threshold: float) -> tuple[float, float]:
    """The two-single-faces rule from a collection's own k-NN scores (`(n, k)`, best first).

    A face's best score is bimodal: faces with a second photo of their person score high, faces
    alone in the collection score what the nearest stranger reaches. Otsu's split of the best
    scores is `single` (never below `threshold`), and Otsu's split of (best score - typical
    neighbour score) is `gap`. No labels are involved.

    Returns:
        `(single, gap)`.
    """
    top = scores[:, 0][np.isfinite(scores[:, 0])]
    if len(top) < 10:  # too few faces to see two modes: one pair's score must pass the base threshold
        return float(threshold), float("inf")
    gaps = scores[:, 0] - background_of(scores)
    gaps = gaps[np.isfinite(gaps)]
    return max(float(threshold), otsu(top)), (otsu(gaps) if len(gaps) >= 10 else float("inf"))


def params_for(card_thresholds: dict | None, vectors: np.ndarray, *, k: int = 20, min_faces: int = 2,
               seed: int = 0) -> ClusterParams:
    """Every parameter for a collection: `threshold_for`'s threshold, then `pair_rule` on the
    neighbour scores (exact, over all faces) of a seeded sample of at most 2,000 faces. Store the result with the groups
    and pass it to `assign`, so that new faces follow the rule their groups were made by.

    Raises:
        ClusterInputError: as `threshold_for`.
    """
    threshold = threshold_for(card_thresholds, vectors, seed=seed)
    far = card_far(card_thresholds)
    x = _check_vectors(vectors)
    if len(x) < 2:
        return ClusterParams(threshold, k=k, min_faces=min_faces, far=far)
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(len(x), min(len(x), 2_000), replace=False))
    scores = _search(x, x[sample], min(10, len(x) - 1) + 1)[0][:, 1:]
    single, gap = pair_rule(scores, threshold)
    return ClusterParams(threshold, k=k, min_faces=min_faces, single=single, gap=gap, far=far)


# ---------------------------------------------------------------------------------------------
# The k-NN graph


def _check_vectors(vectors: np.ndarray, name: str = "vectors") -> np.ndarray:
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ClusterInputError(f"{name} must be a (n, d) array; got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ClusterInputError(f"{name} hold NaN or infinite values")
    norms = np.linalg.norm(x, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > 1e-3)
    if len(bad):
        raise ClusterInputError(f"{name} must be L2-normalised: row {int(bad[0])} has norm {norms[bad[0]]:.4f}")
    return x


def _search(base: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product of `queries` over `base` (FAISS flat: BLAS for batches)."""
    import faiss

    faiss.cvar.distance_compute_blas_threshold = 20  # BLAS for batches (see storage/ann/blas.py)
    k = min(k, len(base))
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    scores, ids = index.search(queries, k)
    return scores, ids.astype(np.int64)


def _hnsw_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-k of every row of `x` over `x` itself (its own row included): FAISS HNSW.

    Built and searched on every thread. FAISS's parallel insertion may in principle order
    inserts differently from run to run; three 2-thread builds of 50,000 faces here gave the same
    graph. The settings are the cheapest that lose nothing the grouping uses: on 100,000
    synthetic faces (benchmarks/scale.py) efConstruction 40 / efSearch 48 find the same 95.9% of
    each face's same-person faces as 80 / 128 did, in 18 s instead of 37 s on 2 cores, in one run
    (the one-thread build at 80 / 128 took 66 s in another, more loaded one).
    """
    import faiss

    index = faiss.IndexHNSWFlat(x.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    index.add(x)
    index.hnsw.efSearch = max(HNSW_EF_SEARCH, 2 * k)
    scores, ids = index.search(x, k)
    return scores, ids.astype(np.int64)


def knn_graph(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each face's `k` nearest other faces by inner product, best first.

    Args:
        vectors: `(n, d)` float32, rows L2-normalised.
        k: neighbours per face (fewer exist when n <= k).

    Returns:
        `(scores, neighbours)`: `(n, k)` float32 and `(n, k)` int64; a face is never its own
        neighbour; missing entries (n <= k, or HNSW found fewer) are -1 with score -inf.
    """
    x = _check_vectors(vectors)
    n = len(x)
    scores, ids = _search(x, x, k + 1) if n <= EXACT_MAX else _hnsw_knn(x, min(k + 1, n))
    # Drop the face itself (normally the first hit; with duplicate vectors it may be anywhere,
    # or pushed out of the list by its twins, in which case the last hit goes).
    own = ids == np.arange(n)[:, None]
    own[~own.any(axis=1), -1] = True
    order = np.argsort(own, axis=1, kind="stable")[:, : ids.shape[1] - 1]
    scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    out_s = np.full((n, k), -np.inf, np.float32)
    out_i = np.full((n, k), -1, np.int64)
    width = min(k, ids.shape[1])
    out_s[:, :width], out_i[:, :width] = scores[:, :width], ids[:, :width]
    out_s[out_i < 0] = -np.inf
    return out_s, out_i


def _photo_pairs(photo_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every pair (i, j), i < j, of positions that share a photo id (cannot-link)."""
    order = np.argsort(photo_ids, kind="stable")
    sorted_ids = photo_ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    a_parts, b_parts = [], []
    for start, size in zip(starts[sizes > 1], sizes[sizes > 1]):
        members = order[start:start + size]
        i, j = np.triu_indices(size, 1)
        a_parts.append(members[i])
        b_parts.append(members[j])
    if not a_parts:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(a_parts), np.concatenate(b_parts)


# ---------------------------------------------------------------------------------------------
# Average linkage on a sparse graph


def _aggregate(a: np.ndarray, b: np.ndarray, blocked: np.ndarray, n: int):
    """Undirected edges, one per unordered pair (a < b, sorted), self-loops dropped; a pair is
    blocked when any of its edges is. Returns (a, b, blocked)."""
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keep = lo != hi
    key = lo[keep] * np.int64(n) + hi[keep]
    blocked = blocked[keep]
    order = np.argsort(key, kind="stable")
    key, blocked = key[order], blocked[order]
    if not len(key):
        return key, key, blocked
    first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    blocked = np.maximum.reduceat(blocked, first)
    key = key[first]
    return key // n, key % n, blocked


def _linkage(sums: np.ndarray, sizes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Average linkage of groups a and b: the mean inner product over every pair of their faces,
    which for sums of vectors is exactly sums[a] . sums[b] / (sizes[a] * sizes[b])."""
    out = np.empty(len(a), np.float64)
    step = 1 << 18  # bounded scratch: two (step, d) gathers at a time
    for lo in range(0, len(a), step):
        sa, sb = sums[a[lo:lo + step]], sums[b[lo:lo + step]]
        out[lo:lo + step] = np.einsum("ij,ij->i", sa, sb, dtype=np.float64)
    return out / (sizes[a].astype(np.float64) * sizes[b])


def agglomerate(sums: np.ndarray, sizes: np.ndarray, a: np.ndarray, b: np.ndarray, blocked: np.ndarray,
                threshold: float, anchored: np.ndarray | None = None, *, single: float | None = None,
                gap: float | None = None, background: np.ndarray | None = None) -> np.ndarray:
    """Average linkage over the candidate pairs of a sparse graph, merging while linkage >= `threshold`.

    The linkage of two groups is exact (the mean score over all pairs of their faces, from the
    sums of their vectors); the graph only says which groups are candidates to merge: those
    joined by at least one edge.

    Args:
        sums: `(n, d)` float32: the sum of each node's unit vectors (a face: its vector; a group
            already formed: the sum of its faces'). Updated in place.
        sizes: `(n,)` int64: faces per node.
        a, b: `(e,)` int64 candidate edges (either order; repeats allowed).
        blocked: `(e,)` bool: a cannot-link (the two nodes never end in one group).
        threshold: the least linkage to merge.
        anchored: `(n,)` bool, optional: two anchored nodes never end in one group (pinned groups).
        single: optional stricter linkage for evidence from few pairs: groups of sizes p and q
            need `threshold + (single - threshold) / (p * q)` (two single faces: `single`).
        gap, background: optional second way for two single faces to pair: their score reaches
            `threshold` and exceeds both faces' `background` (`(n,)`, their typical neighbour
            score) by at least `gap`.

    Returns:
        `(n,)` int64: the group of each node, named by its smallest node.
    """
    n = len(sizes)
    sizes = np.asarray(sizes, np.int64).copy()
    group = np.arange(n, dtype=np.int64)
    pinned = np.zeros(n, bool) if anchored is None else np.asarray(anchored, bool).copy()
    a, b, blocked = _aggregate(np.asarray(a, np.int64), np.asarray(b, np.int64), np.asarray(blocked, np.int8), n)
    link = _linkage(sums, sizes, a, b)
    while len(a):
        live = ~(pinned[a] & pinned[b])  # two pinned groups never merge: their edges can go
        a, b, blocked, link = a[live], b[live], blocked[live], link[live]
        # A blocked pair stays in the list (its block passes to the groups each side joins).
        pairs = sizes[a].astype(np.float64) * sizes[b]
        need = threshold if single is None else threshold + (max(single, threshold) - threshold) / pairs
        ok = link >= need
        if gap is not None and background is not None:
            # Two single faces may also pair when their match stands out from both faces' neighbourhoods.
            ok |= (pairs == 1) & (link >= threshold) & (link - np.maximum(background[a], background[b]) >= gap)
        ok &= blocked == 0
        if not ok.any():
            break
        x = np.concatenate([a[ok], b[ok]])
        y = np.concatenate([b[ok], a[ok]])
        lk = np.concatenate([link[ok], link[ok]])
        order = np.lexsort((y, -lk, x))  # by x, then best linkage, then smallest neighbour
        x, y = x[order], y[order]
        first = np.r_[True, x[1:] != x[:-1]]
        best = np.full(n, -1, np.int64)
        best[x[first]] = y[first]
        xs = x[first]
        mutual = xs[(best[best[xs]] == xs) & (xs < best[xs])]
        if not len(mutual):  # cannot happen (the best pair overall is mutual); guard against a loop
            break
        other = best[mutual]
        into = np.arange(n, dtype=np.int64)
        into[other] = mutual
        pinned[mutual] |= pinned[other]
        sums[mutual] += sums[other]
        sizes[mutual] += sizes[other]
        group = into[group]
        # Only edges with an end in a merged pair change: they are renamed, deduplicated and scored again;
        # the others keep their linkage (their keys cannot meet a renamed edge's: those hold a merged node).
        changed = np.zeros(n, bool)
        changed[mutual] = changed[other] = True
        touched = changed[a] | changed[b]
        ta, tb, tblocked = _aggregate(into[a[touched]], into[b[touched]], blocked[touched], n)
        still = ~touched
        a, b = np.r_[a[still], ta], np.r_[b[still], tb]
        blocked, link = np.r_[blocked[still], tblocked], np.r_[link[still], _linkage(sums, sizes, ta, tb)]
    return group


def _number(group: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Labels 0..m-1 for the groups in `keep` (a bool per node's group id), biggest first, ties by
    first node; -1 for the rest."""
    ids, first, inverse, sizes = np.unique(group, return_index=True, return_inverse=True, return_counts=True)
    kept = keep[ids]
    order = np.lexsort((first[kept], -sizes[kept]))
    label_of = np.full(len(ids), -1, np.int64)
    label_of[np.flatnonzero(kept)[order]] = np.arange(len(order), dtype=np.int64)
    return label_of[inverse.ravel()]


# ---------------------------------------------------------------------------------------------
# The three calls


def _check_ids(photo_ids: np.ndarray, n: int, name: str) -> np.ndarray:
    p = np.asarray(photo_ids)
    if p.shape != (n,) or not np.issubdtype(p.dtype, np.integer):
        raise ClusterInputError(f"{name} must be ({n},) integers, one per face; got {p.dtype} {p.shape}")
    return p.astype(np.int64)


def cluster(vectors: np.ndarray, photo_ids: np.ndarray, params: ClusterParams, *, seed: int = 0,
            fixed: np.ndarray | None = None, apart: np.ndarray | None = None) -> np.ndarray:
    """Group faces into people.

    Args:
        vectors: `(n, d)` float32, rows L2-normalised.
        photo_ids: `(n,)` int64; faces of one photo share an id and never share a group.
        params: threshold, k, min_faces.
        seed: reserved for randomised parts; the algorithm is deterministic (ties broken by index).
        fixed: optional `(n,)` int64 of pinned labels, -1 = not pinned. Faces pinned to one label
            start as one group and stay together; faces pinned to different labels never meet;
            unpinned faces may join a pinned group. A pinned group is always kept (labelled even
            when smaller than min_faces). Find a pinned label's new number as
            `labels[fixed == L][0]`.
        apart: optional `(p, 2)` int64 pairs of face positions that must not share a group (a face
            the user moved out of a person, against that person's faces).

    Returns:
        `(n,)` int64 labels: 0..m-1 biggest first, -1 = unclustered.

    Raises:
        ClusterInputError: bad shapes, vectors not unit length, or `fixed` pinning two faces of one
            photo (or an `apart` pair) to one label.
    """
    del seed
    x = _check_vectors(vectors)
    n = len(x)
    photos = _check_ids(photo_ids, n, "photo_ids")
    pins = np.full(n, -1, np.int64) if fixed is None else _check_ids(fixed, n, "fixed")
    if n == 0:
        return np.empty(0, np.int64)
    pa, pb = _photo_pairs(photos)
    if apart is not None:
        pairs = np.asarray(apart, np.int64).reshape(-1, 2)
        if len(pairs) and (pairs.min() < 0 or pairs.max() >= n):
            raise ClusterInputError(f"apart holds face positions outside 0..{n - 1}")
        pa, pb = np.r_[pa, pairs[:, 0]], np.r_[pb, pairs[:, 1]]
    clash = (pins[pa] >= 0) & (pins[pa] == pins[pb])
    if clash.any():
        i = int(np.flatnonzero(clash)[0])
        raise ClusterInputError(f"faces {int(pa[i])} and {int(pb[i])} are pinned to one label ({int(pins[pa[i]])}) "
                                "but are of one photo or kept apart: unpin one of them")
    # Start: faces pinned to one label are one node (named by their first face).
    start = np.arange(n, dtype=np.int64)
    pinned_rows = np.flatnonzero(pins >= 0)
    if len(pinned_rows):
        _, first, inverse = np.unique(pins[pinned_rows], return_index=True, return_inverse=True)
        start[pinned_rows] = pinned_rows[first][inverse.ravel()]
    anchored = np.zeros(n, bool)
    anchored[start[pinned_rows]] = True
    s, nb = knn_graph(x, min(params.k, max(n - 1, 1)))
    rows = np.repeat(np.arange(n, dtype=np.int64), nb.shape[1])
    found = nb.ravel() >= 0
    a = np.r_[start[rows[found]], start[pa]]
    b = np.r_[start[nb.ravel()[found]], start[pb]]
    blocked = np.r_[np.zeros(int(found.sum()), bool), np.ones(len(pa), bool)]
    sums = np.zeros_like(x)
    np.add.at(sums, start, x)
    sizes = np.bincount(start, minlength=n)
    single, gap = params.single, params.gap
    if single is None or gap is None:
        est_single, est_gap = pair_rule(s, params.threshold)
        single = est_single if single is None else single
        gap = est_gap if gap is None else gap
    single = params.single_for(n, single)
    background = np.full(n, np.inf)
    background[start] = background_of(s)  # only single faces use it: a pinned pair's start is not single
    group = agglomerate(sums, sizes, a, b, blocked, params.threshold, anchored, single=single, gap=gap,
                        background=background)[start]
    sizes = np.bincount(group, minlength=n)
    keep = sizes >= params.min_faces
    keep[group[pinned_rows]] = True
    return _number(group, keep)


def assign(new_vectors: np.ndarray, new_photo_ids: np.ndarray, vectors: np.ndarray, photo_ids: np.ndarray,
           labels: np.ndarray, params: ClusterParams) -> np.ndarray:
    """New faces into an existing grouping, without regrouping the old faces.

    The existing groups are pinned nodes (they never merge with one another); the new faces are
    free nodes linked to the groups by their `k` nearest old faces and to each other by their `k`
    nearest new faces; then the same average linkage as `cluster`. A new face joins a group when
    its mean score to that group's faces among its neighbours reaches the threshold (and no face
    of its photo is in it); new faces that match each other and no group form new groups, numbered
    from `labels.max() + 1` biggest first. Old unclustered faces (-1) stay as they are (a
    recluster regroups them).

    Args:
        new_vectors: `(m, d)` float32 unit rows; new_photo_ids: `(m,)` int64.
        vectors, photo_ids, labels: the existing faces `(n, d)`, `(n,)`, `(n,)` (labels from `cluster`).
        params: as for `cluster`.

    Returns:
        `(m,)` int64: an existing label, a new label above `labels.max()`, or -1.
    """
    q = _check_vectors(new_vectors, "new_vectors")
    m = len(q)
    new_photos = _check_ids(new_photo_ids, m, "new_photo_ids")
    x = _check_vectors(vectors) if len(vectors) else np.empty((0, q.shape[1]), np.float32)
    old_labels = _check_ids(labels, len(x), "labels")
    old_photos = _check_ids(photo_ids, len(x), "photo_ids")
    if m == 0:
        return np.empty(0, np.int64)
    if len(x) and x.shape[1] != q.shape[1]:
        raise ClusterInputError(f"new_vectors are {q.shape[1]}-d but the existing faces are {x.shape[1]}-d")
    n_groups = int(old_labels.max()) + 1 if len(old_labels) else 0
    parts_a, parts_b, parts_w = [], [], []
    background = np.full(m + n_groups, np.inf)
    seen = [np.full((m, 1), -np.inf, np.float32)]  # every neighbour score of each new face
    # New faces to each other.
    if m > 1:
        s, nb = knn_graph(q, min(params.k, m - 1))
        seen.append(s)
        rows = np.repeat(np.arange(m, dtype=np.int64), nb.shape[1])
        found = nb.ravel() >= 0
        parts_a.append(rows[found])
        parts_b.append(nb.ravel()[found])
        parts_w.append(np.zeros(int(found.sum()), bool))
    pa, pb = _photo_pairs(new_photos)
    parts_a.append(pa)
    parts_b.append(pb)
    parts_w.append(np.ones(len(pa), bool))
    # New faces to the existing groups (group g is node m + g).
    grouped = np.flatnonzero(old_labels >= 0)
    if len(grouped):
        s, nb = _search(x[grouped], q, params.k)
        seen.append(np.where(nb >= 0, s, -np.inf))
        found = nb >= 0
        rows = np.repeat(np.arange(m, dtype=np.int64), nb.shape[1]).reshape(nb.shape)
        parts_a.append(rows[found])
        parts_b.append(m + old_labels[grouped[nb[found]]])
        parts_w.append(np.zeros(int(found.sum()), bool))
        # A new face's photo already in a group: that group is closed to it.
        order = np.argsort(old_photos[grouped], kind="stable")
        sorted_photos = old_photos[grouped][order]
        lo = np.searchsorted(sorted_photos, new_photos, "left")
        hi = np.searchsorted(sorted_photos, new_photos, "right")
        for i in np.flatnonzero(hi > lo):
            g = np.unique(old_labels[grouped[order[lo[i]:hi[i]]]])
            parts_a.append(np.full(len(g), i, np.int64))
            parts_b.append(m + g)
            parts_w.append(np.ones(len(g), bool))
    background[:m] = background_of(-np.sort(-np.concatenate(seen, axis=1), axis=1))
    anchored = np.r_[np.zeros(m, bool), np.ones(n_groups, bool)]
    sums = np.zeros((m + n_groups, q.shape[1]), np.float32)
    sums[:m] = q
    np.add.at(sums, m + old_labels[grouped], x[grouped])
    sizes = np.r_[np.ones(m, np.int64), np.bincount(old_labels[grouped], minlength=n_groups)]
    group = agglomerate(sums, sizes, np.concatenate(parts_a), np.concatenate(parts_b),
                        np.concatenate(parts_w), params.threshold, anchored, single=params.single_for(len(x) + m),
                        gap=params.gap, background=background)
    out = np.full(m, -1, np.int64)
    # A new face whose group holds an old group node takes that group's label.
    old_node = np.full(m + n_groups, -1, np.int64)
    old_node[group[m:]] = np.arange(n_groups)
    joined = old_node[group[:m]]
    out[joined >= 0] = joined[joined >= 0]
    free = np.flatnonzero(joined < 0)
    if len(free):
        sub = group[free]
        sizes = np.bincount(sub, minlength=m + n_groups)
        fresh = _number(sub, sizes >= params.min_faces)
        out[free] = np.where(fresh >= 0, fresh + n_groups, -1)
    return out


def suggest(vectors: np.ndarray, labels: np.ndarray, named_vectors: np.ndarray, named_identities,
            threshold: float) -> list[Suggestion]:
    """Groups that look like a named identity, best first: offered, never merged.

    A group's score against an identity is the mean inner product of the group's faces with that
    identity's faces (average linkage, the rule that formed the groups); a group is offered the
    identity with the highest score when it reaches `threshold`.

    Args:
        vectors: `(n, d)` float32 unit rows of the grouped faces; labels: `(n,)` int64 (-1 ignored).
        named_vectors: `(p, d)` float32 unit rows of faces with an identity.
        named_identities: `(p,)` their identity names (strings).
        threshold: the least mean score to offer (use the clustering threshold).

    Returns:
        One `Suggestion` per group that has one, by descending score (ties: group number).
    """
    x = _check_vectors(vectors)
    lab = _check_ids(labels, len(x), "labels")
    names = np.asarray(named_identities, dtype=object)
    if len(names) == 0 or not (lab >= 0).any():
        return []
    y = _check_vectors(named_vectors, "named_vectors")
    if len(y) != len(names):
        raise ClusterInputError(f"{len(y)} named vectors but {len(names)} identities")
    if y.shape[1] != x.shape[1]:
        raise ClusterInputError(f"named_vectors are {y.shape[1]}-d but the faces are {x.shape[1]}-d")
    identities, who = np.unique(names.astype(str), return_inverse=True)
    # Mean vectors: mean(x_i . y_j) over i in group, j in identity = mean_x . mean_y (exact).
    n_groups = int(lab.max()) + 1
    rows = lab >= 0
    gsum = np.zeros((n_groups, x.shape[1]), np.float64)
    np.add.at(gsum, lab[rows], x[rows])
    gmean = gsum / np.bincount(lab[rows], minlength=n_groups)[:, None]
    isum = np.zeros((len(identities), y.shape[1]), np.float64)
    np.add.at(isum, who.ravel(), y)
    imean = isum / np.bincount(who.ravel(), minlength=len(identities))[:, None]
    score = gmean @ imean.T
    best = np.argmax(score, axis=1)
    top = score[np.arange(n_groups), best]
    present = np.bincount(lab[rows], minlength=n_groups) > 0
    out = [Suggestion(int(g), str(identities[best[g]]), float(top[g]))
           for g in np.flatnonzero(present & (top >= threshold))]
    return sorted(out, key=lambda s: (-s.score, s.group))
