"""What a verdict reads from a search, measured against exact search: identity agreement, floor recall, the floor.

An identification answers from the top identity and (margin rule) the runner-up identity of a face's
neighbours, and compares a statistic with a threshold. So what an approximate index must get right
is not every one of the 10 nearest faces but (a) the top two identities wherever they score near or
above the threshold, for enrolled faces and for strangers alike (a held-out row is searched twice:
as itself, and as a stranger with its own identity left out), and (b) every face scoring near or
above the threshold, any of which could change a verdict. Identities are ranked here by their
best face among the neighbours (fusion `best`), which is what the index alone decides: the query
path's fused scores are computed from the identities the neighbours name.

    top = top_two(scores, positions, labels)                  # (m, 2) identities and their best scores
    floor, source = estimate_floor(ex_scores, ex_positions, labels, query_labels)
    agreement(top_found, top_exact, floor)                    # share of queries whose verdict inputs agree
    floor_recall(found_scores, exact_scores, floor)           # share of faces >= floor that were found

Scores are inner products of L2-normalised rows (cosines), exact for what an index returns (flat
codes, or lossy codes re-ranked from the raw vectors), which lets found scores be compared directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facesearch.embedder.core.errors import AnnInputError

# Neighbours a tuning query reads: what the query path asks for (10 candidate identities for the
# fused scores, x4 oversampling: `facesearch.index.openset.ranking`). The exact search goes as deep.
DEPTH = 40
# The estimated stranger threshold: the score a stranger's best match reaches at 1% FPIR (the open-set
# calibration's default target), from the held-out rows' best other-identity scores.
STRANGER_FPIR = 0.01
# The floor lies below the threshold by the margin between the 1% and the 10% points of the same
# distribution: a margin in the gallery's own units. An absolute margin does not fit both kinds of
# gallery: 0.05 below the threshold is 3 standard deviations of the best-stranger score on a
# dlib-like gallery (34 of the 40 neighbours above it: floor recall became recall@40) and 0.6 on an
# ArcFace-like one.
FLOOR_FPIR = 0.10
# Rows without identities: their k-th neighbour is taken for a stranger (identities own fewer faces).
STRANGER_RANK = 10
SCORE_TOLERANCE = 1e-5  # two scores this close are a tie: either face (or identity) is a right answer


@dataclass(frozen=True)
class TopTwo:
    """The two best identities of each query's neighbours: `(m, 2)` labels (-1: none) and scores (-inf: none)."""

    identities: np.ndarray
    scores: np.ndarray


def position_labels(labels: np.ndarray | None, n: int) -> np.ndarray:
    """`(n,)` int64 identity codes, every row without an identity (code < 0, or no labels at all) its own.

    Unlabelled rows get codes below -1, distinct from each other and from the padding label -1.
    """
    if labels is None:
        return -2 - np.arange(n, dtype=np.int64)
    codes = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(codes) != n:
        raise AnnInputError(f"got {len(codes)} identity labels for {n} rows: pass one per row (-1 for none)")
    return np.where(codes >= 0, codes, -2 - np.arange(n, dtype=np.int64))


def top_two(scores: np.ndarray, positions: np.ndarray, labels: np.ndarray,
            exclude: np.ndarray | None = None) -> TopTwo:
    """The best and the runner-up identity among each row's neighbours, by their best face.

    Args:
        scores: `(m, k)` neighbour scores, best first (-inf padding).
        positions: `(m, k)` int64 positions (-1 padding).
        labels: `(n,)` int64 codes from `position_labels`.
        exclude: `(m,)` an identity code per row left out of its ranking (the query's own: the row
            searched as a stranger), or None.

    Returns:
        A `TopTwo`; a row with fewer than two identities among its neighbours has -1 / -inf for
        the missing ones.
    """
    valid = positions >= 0
    lab = np.where(valid, labels[np.maximum(positions, 0)], -1)
    if exclude is not None:
        valid &= lab != np.asarray(exclude, np.int64)[:, None]
    rows = np.arange(len(lab))
    has1 = valid.any(axis=1)
    at1 = np.argmax(valid, axis=1)
    first = np.where(has1, lab[rows, at1], -1)
    other = valid & (lab != first[:, None])
    has2 = other.any(axis=1)
    at2 = np.argmax(other, axis=1)
    second = np.where(has2, lab[rows, at2], -1)
    s1 = np.where(has1, scores[rows, at1], -np.inf)
    s2 = np.where(has2, scores[rows, at2], -np.inf)
    return TopTwo(np.stack([first, second], axis=1), np.stack([s1, s2], axis=1).astype(np.float64))


def agreement(found: TopTwo, exact: TopTwo, floor: float) -> tuple[float, float]:
    """How often the identities a verdict reads agree with exact search.

    The top identity and the runner-up each agree when they are the exact one, or score the same
    (a tie), or when the exact one scores below `floor`: an identity that low reaches no threshold
    near the decision's, and what an approximate search puts in its place scores lower still (its
    scores are exact for what it finds). A runner-up's score also enters the margin rule's
    statistic, so the second figure, without the floor, is reported beside.

    Returns:
        (agreement, strict agreement: top and runner-up the exact ones wherever they score), as
        shares of the rows.
    """
    def same(column: int) -> np.ndarray:
        ids_equal = found.identities[:, column] == exact.identities[:, column]
        tie = np.abs(found.scores[:, column] - exact.scores[:, column]) <= SCORE_TOLERANCE
        both_none = ~np.isfinite(found.scores[:, column]) & ~np.isfinite(exact.scores[:, column])
        return ids_equal | tie | both_none

    top, runner_up = same(0), same(1)
    low = exact.scores < floor
    return float(np.mean((top | low[:, 0]) & (runner_up | low[:, 1]))), float(np.mean(top & runner_up))


def floor_recall(found_scores: np.ndarray, exact_scores: np.ndarray, floor: float) -> float:
    """Share of the exact neighbours scoring at or above `floor` that the approximate search returned.

    Found scores are exact (see the module notes), so a found face at or above the floor is one of
    the exact ones; counting them per row, capped at the exact count, counts ties as found.

    Args:
        found_scores: `(m, k)` scores of the approximate search (-inf padding).
        exact_scores: `(m, k')` exact scores, best first (rows with more faces above the floor than
            k' count k').

    Returns:
        The share, 1.0 when no exact neighbour reaches the floor.
    """
    wanted = (exact_scores >= floor).sum(axis=1)
    got = np.minimum((found_scores >= floor - SCORE_TOLERANCE).sum(axis=1), wanted)
    return float(got.sum() / wanted.sum()) if wanted.sum() else 1.0


def stranger_scores(exact_scores: np.ndarray, exact_positions: np.ndarray, labels: np.ndarray,
                    query_labels: np.ndarray | None) -> np.ndarray:
    """Each held-out row's best score against another identity: how high a stranger's best match reaches.

    With `query_labels`, the first neighbour of another identity (the last neighbour when every one
    shares the row's); without, the `STRANGER_RANK`-th neighbour.
    """
    if query_labels is None:
        return exact_scores[:, min(STRANGER_RANK, exact_scores.shape[1]) - 1].astype(np.float64)
    valid = exact_positions >= 0
    lab = np.where(valid, labels[np.maximum(exact_positions, 0)], -1)
    other = valid & (lab != np.asarray(query_labels, np.int64)[:, None])
    at = np.where(other.any(axis=1), np.argmax(other, axis=1), exact_scores.shape[1] - 1)
    return exact_scores[np.arange(len(at)), at].astype(np.float64)


def estimate_floor(strangers: np.ndarray, threshold: float | None = None) -> tuple[float, float]:
    """The floor below which no face can change a verdict, from the held-out rows' stranger scores.

    Args:
        strangers: `(m,)` best other-identity scores (`stranger_scores`), finite ones used.
        threshold: the index's calibrated threshold (a cosine: the score rule); None: estimated as the
            `1 - STRANGER_FPIR` quantile of `strangers`.

    Returns:
        (floor, threshold): floor = threshold - (the 1% point - the 10% point of `strangers`).
    """
    s = strangers[np.isfinite(strangers)]
    if len(s) == 0:
        return (-1.0, 1.0) if threshold is None else (-1.0, float(threshold))
    high, low = np.quantile(s, [1.0 - STRANGER_FPIR, 1.0 - FLOOR_FPIR])
    t = float(high) if threshold is None else float(threshold)
    return t - float(high - low), t
