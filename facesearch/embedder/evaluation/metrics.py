"""Pair-verification metrics in pure numpy (no TensorFlow): scores, thresholds, ROC, k-fold accuracy.

One rule everywhere: a pair is predicted "same" when `score >= threshold`. Tied scores always fall
on the same side of a threshold, and a chosen threshold is the midpoint between two neighbouring
distinct scores (or one beyond the lowest / highest score), never a score itself.

Used by the training callback (`facesearch.train.callbacks.PairVerification`) and by `facesearch eval`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from facesearch.embedder.core.errors import DatasetError


def pair_scores(emb_a: np.ndarray, emb_b: np.ndarray) -> np.ndarray:
    """Cosine score of each row of `emb_a` with the same row of `emb_b`.

    Args:
        emb_a: `(p, d)` float embeddings (any norm).
        emb_b: `(p, d)` float embeddings.

    Returns:
        `(p,)` float64 scores in [-1, 1]; a zero row scores 0 with everything.

    Raises:
        ValueError: the arrays are not 2-D of the same shape.
    """
    a = np.asarray(emb_a, dtype=np.float64)
    b = np.asarray(emb_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two (p, d) arrays of the same shape, got {a.shape} and {b.shape}")
    return np.sum(_normalize_rows(a) * _normalize_rows(b), axis=1)


def best_threshold_accuracy(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """The accuracy of the best single threshold, predicting "same" when `score >= threshold`.

    Candidate thresholds are the midpoints of the sorted unique scores, padded by one below
    the lowest and one above the highest, so "all same" and "all different" are candidates and
    tied scores always fall on the same side. Among equally accurate thresholds the lowest wins.

    Args:
        scores: `(p,)` float scores, higher is more alike.
        same: `(p,)` bool, True where the pair shows one label.

    Returns:
        `(accuracy, threshold)`.

    Raises:
        ValueError: empty input or shapes that differ.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(same).astype(bool).ravel()
    if s.size == 0 or s.shape != y.shape:
        raise ValueError(f"expected non-empty scores and labels of one length, got {s.shape} and {y.shape}")
    order = np.argsort(s, kind="stable")
    s, y = s[order], y[order]
    unique = np.unique(s)
    # Threshold k predicts "same" for scores >= unique[k]; k = len(unique) predicts none same.
    first = np.append(np.searchsorted(s, unique, side="left"), s.size)
    diff_below = np.concatenate([[0], np.cumsum(~y)])[first]
    same_at_or_above = y.sum() - np.concatenate([[0], np.cumsum(y)])[first]
    correct = diff_below + same_at_or_above
    k = int(np.argmax(correct))
    padded = np.concatenate([[unique[0] - 1.0], unique, [unique[-1] + 1.0]])
    threshold = (padded[k] + padded[k + 1]) / 2
    return float(correct[k] / s.size), float(threshold)


@dataclass(frozen=True)
class OperatingPoint:
    """The threshold that accepts the most positives while keeping the false accept rate <= `far_target`.

    Attributes:
        far_target: the false accept rate asked for.
        threshold: predicts "same" when `score >= threshold`.
        tar: true accept rate at that threshold (positives accepted / positives).
        far: false accept rate actually reached (negatives accepted / negatives), <= `far_target`.
    """

    far_target: float
    threshold: float
    tar: float
    far: float

    def to_dict(self) -> dict:
        return {"far_target": self.far_target, "threshold": self.threshold, "tar": self.tar, "far": self.far}


@dataclass(frozen=True)
class VerificationReport:
    """Pair verification figures, as `verify_pairs` measures them.

    `accuracy` +/- `accuracy_std` is the k-fold figure: on each fold, the accuracy of the threshold
    chosen on the other folds (`fold_thresholds`); the std is the population std (ddof=0) of the fold
    accuracies, as the LFW literature reports it. With a single fold there is nothing to hold out:
    `accuracy` is then `best_accuracy` (threshold fit on the pairs it is measured on).
    `threshold` / `best_accuracy`: the best single threshold on all pairs (what calibration stores).
    `roc`: `(far, tar, thresholds)` arrays, see `roc_curve`.
    """

    pairs: int
    positives: int
    negatives: int
    folds: int
    accuracy: float
    accuracy_std: float
    fold_accuracies: tuple[float, ...]
    fold_thresholds: tuple[float, ...]
    threshold: float
    best_accuracy: float
    auc: float
    operating_points: tuple[OperatingPoint, ...]
    roc: tuple[np.ndarray, np.ndarray, np.ndarray]

    def at_far(self, far_target: float) -> OperatingPoint:
        """The operating point measured for `far_target` (KeyError if it was not asked for)."""
        for point in self.operating_points:
            if np.isclose(point.far_target, far_target):
                return point
        raise KeyError(f"no operating point at FAR {far_target:g}; measured: "
                       f"{[p.far_target for p in self.operating_points]}")

    def to_dict(self) -> dict:
        """Every figure except the ROC arrays, as plain JSON types."""
        return {"pairs": self.pairs, "positives": self.positives, "negatives": self.negatives,
                "folds": self.folds, "accuracy": self.accuracy, "accuracy_std": self.accuracy_std,
                "fold_accuracies": list(self.fold_accuracies), "fold_thresholds": list(self.fold_thresholds),
                "threshold": self.threshold, "best_accuracy": self.best_accuracy, "auc": self.auc,
                "tar_at_far": [p.to_dict() for p in self.operating_points]}


FAR_TARGETS = (1e-3, 1e-2)


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve, one point per distinct score, from "accept none" to "accept all".

    Args:
        scores: `(p,)` float scores, higher is more alike.
        same: `(p,)` bool, True for positive pairs.

    Returns:
        `(far, tar, thresholds)`, each `(u + 1,)` for `u` distinct scores: `thresholds[0]` is `+inf`
        (nothing accepted, the point (0, 0)), then the distinct scores in decreasing order;
        `far[i]` / `tar[i]` are the rates of negatives / positives with `score >= thresholds[i]`.

    Raises:
        ValueError: empty or mismatched input, or no positive or no negative pair.
    """
    s, y = _check_scores(scores, same)
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    if pos.size == 0 or neg.size == 0:
        raise ValueError(f"a ROC curve needs positive and negative pairs, got {pos.size} and {neg.size}")
    cuts = np.unique(s)[::-1]
    tar = (pos.size - np.searchsorted(pos, cuts, side="left")) / pos.size
    far = (neg.size - np.searchsorted(neg, cuts, side="left")) / neg.size
    return np.r_[0.0, far], np.r_[0.0, tar], np.r_[np.inf, cuts]


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids: a tie between a positive and a negative counts one half).

    Equals the probability that a random positive pair scores above a random negative one.

    Raises:
        ValueError: as `roc_curve`.
    """
    far, tar, _ = roc_curve(scores, same)
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2))


def threshold_at_far(negatives: np.ndarray, far_target: float, others: np.ndarray | None = None) -> float:
    """The lowest threshold whose false accept rate on `negatives` is at most `far_target`.

    With `n` negatives, at most `floor(far_target * n)` of them may score `>= threshold`. The
    threshold is the midpoint between the highest negative that must be rejected and the next
    higher distinct score among `negatives` and `others` (one above it if there is none), so
    ties are never split. The lowest such threshold accepts the most positives.

    Args:
        negatives: `(n,)` scores that should be rejected (n >= 1).
        far_target: the false accept rate allowed, in [0, 1].
        others: scores of the pairs that should be accepted, only used to place the midpoint.

    Returns:
        The threshold (accept when `score >= threshold`).

    Raises:
        ValueError: no negatives, or `far_target` outside [0, 1].
    """
    neg = np.sort(np.asarray(negatives, dtype=np.float64).ravel())[::-1]
    if neg.size == 0 or not 0.0 <= far_target <= 1.0:
        raise ValueError(f"expected negatives and a FAR in [0, 1], got {neg.size} negatives and FAR {far_target}")
    everything = neg if others is None else np.r_[neg, np.asarray(others, dtype=np.float64).ravel()]
    allowed = int(np.floor(far_target * neg.size + 1e-9))  # 1e-9: 1e-3 * 3000 must allow 3, not 2
    if allowed >= neg.size:
        return float(everything.min() - 0.5)
    cut = neg[allowed]  # the highest negative that must be rejected (and every tie of it)
    above = everything[everything > cut]
    return float((cut + above.min()) / 2 if above.size else cut + 0.5)


def tar_at_far(scores: np.ndarray, same: np.ndarray, far_target: float) -> OperatingPoint:
    """The true accept rate at the lowest threshold whose false accept rate is <= `far_target`.

    Raises:
        ValueError: empty or mismatched input, no negative pair, or `far_target` outside [0, 1].
    """
    s, y = _check_scores(scores, same)
    threshold = threshold_at_far(s[~y], far_target, s[y])
    tar = float(np.mean(s[y] >= threshold)) if y.any() else float("nan")
    return OperatingPoint(float(far_target), threshold, tar, float(np.mean(s[~y] >= threshold)))


def stratified_folds(same: np.ndarray, k: int = 10) -> np.ndarray:
    """Fold ids that split positives and negatives, each in their given order, into `k` near-equal runs.

    On a file laid out as LFW's pairs.txt (per fold: its positives, then its negatives) this gives
    exactly the protocol's folds; on a file with no folds it still gives each fold both kinds.

    Args:
        same: `(p,)` bool.
        k: folds wanted (>= 1); a kind with fewer than `k` pairs leaves some folds without it.

    Returns:
        `(p,)` int64 fold ids in `[0, k)`.
    """
    y = np.asarray(same).astype(bool).ravel()
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    folds = np.empty(y.size, np.int64)
    for kind in (True, False):
        members = np.flatnonzero(y == kind)
        folds[members] = np.arange(members.size) * k // max(members.size, 1)
    return folds


def verify_pairs(scores: np.ndarray, same: np.ndarray, folds: int | np.ndarray = 10,
                 far_targets: tuple[float, ...] = FAR_TARGETS) -> VerificationReport:
    """Every verification figure: k-fold accuracy, best threshold, ROC, AUC, TAR at FAR.

    Args:
        scores: `(p,)` float scores, higher is more alike.
        same: `(p,)` bool, True for positive pairs.
        folds: `(p,)` int fold id of each pair (e.g. LFW's, from `facesearch.embedder.evaluation.lfw.read_pairs`), or a
            number of folds for `stratified_folds`. A test fold may lack positives or negatives:
            its accuracy is still defined.
        far_targets: false accept rates at which to report the TAR.

    Returns:
        A `VerificationReport`.

    Raises:
        ValueError: empty or mismatched input, a fold id array of another length, or a set
            without positive or without negative pairs.
    """
    s, y = _check_scores(scores, same)
    fold_ids = stratified_folds(y, folds) if np.isscalar(folds) else np.asarray(folds).ravel()
    if fold_ids.shape != s.shape:
        raise ValueError(f"expected one fold id per pair ({s.size}), got {fold_ids.shape}")
    far, tar, cuts = roc_curve(s, y)
    best_accuracy, threshold = best_threshold_accuracy(s, y)
    accuracies, thresholds = [], []
    distinct = np.unique(fold_ids)
    for fold in distinct if distinct.size > 1 else ():
        test = fold_ids == fold
        _, fold_threshold = best_threshold_accuracy(s[~test], y[~test])
        accuracies.append(float(np.mean((s[test] >= fold_threshold) == y[test])))
        thresholds.append(fold_threshold)
    accuracy, std = (float(np.mean(accuracies)), float(np.std(accuracies))) if accuracies else (best_accuracy, 0.0)
    return VerificationReport(
        pairs=int(s.size), positives=int(y.sum()), negatives=int((~y).sum()), folds=int(distinct.size),
        accuracy=accuracy, accuracy_std=std, fold_accuracies=tuple(accuracies), fold_thresholds=tuple(thresholds),
        threshold=threshold, best_accuracy=best_accuracy,
        auc=float(np.sum(np.diff(far) * (tar[1:] + tar[:-1]) / 2)),
        operating_points=tuple(tar_at_far(s, y, f) for f in far_targets), roc=(far, tar, cuts))


def make_pairs(labels: np.ndarray, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample distinct, balanced positive and negative index pairs.

    Returns `n_pairs // 2` pairs of each kind, or fewer of both when fewer distinct positive
    or negative pairs exist.

    Args:
        labels: `(n,)` int labels.
        n_pairs: the number of pairs wanted (both kinds together).
        seed: seed of the sampling.

    Returns:
        `(pairs, same)`: `(p, 2)` int64 indices into `labels` with `pairs[:, 0] < pairs[:, 1]`,
        and `(p,)` bool, True for positive pairs; shuffled together.

    Raises:
        DatasetError: no label has two samples, or there is only one label.
    """
    labels = np.asarray(labels).ravel()
    rng = np.random.default_rng(seed)
    positives = _positive_pairs(labels)
    total = labels.size * (labels.size - 1) // 2
    n_neg_available = total - len(positives)
    if len(positives) == 0 or n_neg_available == 0:
        raise DatasetError(
            f"cannot make verification pairs from {labels.size} samples of {np.unique(labels).size} "
            "labels: need some label with two samples and at least two labels"
        )
    n = min(n_pairs // 2, len(positives), n_neg_available)
    pos = positives[rng.choice(len(positives), size=n, replace=False)]
    neg = _sample_negatives(labels, n, rng)
    pairs = np.concatenate([pos, neg]).astype(np.int64)
    same = np.concatenate([np.ones(n, bool), np.zeros(n, bool)])
    order = rng.permutation(len(pairs))
    return pairs[order], same[order]


def _check_scores(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(same).astype(bool).ravel()
    if s.size == 0 or s.shape != y.shape:
        raise ValueError(f"expected non-empty scores and labels of one length, got {s.shape} and {y.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"scores must be finite; {np.count_nonzero(~np.isfinite(s))} of {s.size} are not")
    return s, y


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _positive_pairs(labels: np.ndarray) -> np.ndarray:
    # Every same-label pair: sum of k(k-1)/2 over labels, small for validation-sized sets.
    blocks = [np.zeros((0, 2), np.int64)]
    for value in np.unique(labels):
        members = np.flatnonzero(labels == value)
        i, j = np.triu_indices(members.size, 1)
        blocks.append(np.stack([members[i], members[j]], axis=1))
    return np.concatenate(blocks)


def _sample_negatives(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    # Rejection sampling: negative pairs outnumber positive ones in any set with several labels.
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < n:
        i, j = rng.integers(0, labels.size, size=(2, 2 * (n - len(chosen)) + 8))
        for a, b in zip(np.minimum(i, j), np.maximum(i, j), strict=True):
            if labels[a] != labels[b] and len(chosen) < n:
                chosen.add((int(a), int(b)))
    return np.array(sorted(chosen), dtype=np.int64).reshape(-1, 2)
