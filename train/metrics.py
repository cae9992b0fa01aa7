"""Pair-verification metrics in pure numpy (no TensorFlow): scores, best threshold, pair sampling."""

from __future__ import annotations

import numpy as np

from embedder.errors import DatasetError


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
