"""Decision rules: the one number a search is judged by, from its identities' scores, and its threshold.

A search ranks identities by a fused score of their faces (`fuse_identity_scores`); the answer is
the top identity when the decision statistic reaches the threshold, else `unknown`. The statistic is
the best identity score (`score`), or that score plus its lead over the runner-up (`margin`, the
default of a calibrated index): a stranger tends to sit about as close to several people, an
enrolled person close to one. A `Decision` says which rule, which fusion and which threshold apply
to a search, and where the threshold came from (`SOURCES`); `facesearch.index.openset.calibration` makes one from an
index's stored estimate.

Measured on LFW with the default model (README, "Measured"): at a self-calibrated 1% FPIR the margin
rule raised DIR from 0.51 to 0.65 with one photo enrolled per person, and the template fusion with
the margin rule from 0.58 to 0.72 with two (the best single score ranks second).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

FUSIONS = ("best", "top2", "template")
RULES = ("score", "margin")
DEFAULT_FUSION = "template"  # won on View-1 DevTrain with 2 photos enrolled; equals "best" with 1 photo
DEFAULT_RULE = "margin"
DEFAULT_MARGIN_WEIGHT = 1.0  # statistic s1 + w (s1 - s2); chosen on DevTrain without strangers
FLOOR_SCORE = -1.0  # the runner-up score when a search returns a single identity
# Where a search's threshold came from: `query --threshold`, the index's calibration at its own
# target or at `query --fpir`, the model card's calibrated pair threshold, or the uncalibrated default.
SOURCES = ("--threshold", "calibration", "--fpir", "model-card", "default")


def fuse_identity_scores(scores: np.ndarray, identities: Sequence[Hashable],
                         fusion: str = "best") -> tuple[list[Hashable], np.ndarray]:
    """One identity score per identity from a query's neighbour faces, best first.

    `best`: the identity's highest face score. `top2`: the mean of its two highest (its one score
    when only one of its faces is among the neighbours: ask for enough neighbours). `template`: the
    neighbours are already identity templates (`identity_templates`), one per identity.

    Args:
        scores: `(k,)` neighbour scores (inner products of L2-normalised vectors).
        identities: `k` identity labels, one per neighbour.
        fusion: one of `FUSIONS`.

    Returns:
        `(labels, fused)`: distinct identities and `(n,)` float64 scores, highest first (stable).

    Raises:
        ValueError: lengths differ, unknown fusion, or repeated identities with `template`.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) != len(identities):
        raise ValueError(f"got {len(s)} scores but {len(identities)} identities")
    check_choice("fusion", fusion, FUSIONS)
    per: dict[Hashable, list[float]] = {}
    for value, label in zip(s.tolist(), identities):
        per.setdefault(label, []).append(value)
    if fusion == "template" and len(per) != len(s):
        raise ValueError("template fusion takes one neighbour per identity (a template index); got repeats")
    fused = {label: (max(v) if fusion != "top2" else float(np.mean(sorted(v, reverse=True)[:2])))
             for label, v in per.items()}
    labels = sorted(fused, key=lambda label: -fused[label])
    return labels, np.array([fused[label] for label in labels], dtype=np.float64)


def identity_templates(vectors: np.ndarray, identities: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
    """The L2-normalised mean vector of each identity's faces.

    Args:
        vectors: `(n, d)` float32, rows L2-normalised.
        identities: `n` labels.

    Returns:
        `(labels, templates)`: `(u,)` sorted distinct labels and `(u, d)` float32 rows L2-normalised.
    """
    v = check_vectors(vectors)
    labels, inverse = np.unique(np.asarray(identities), return_inverse=True)
    sums = np.zeros((len(labels), v.shape[1]), np.float64)
    np.add.at(sums, inverse.reshape(-1), v)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return labels, (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def decision_statistic(top_scores: np.ndarray, rule: str = DEFAULT_RULE,
                       margin_weight: float = DEFAULT_MARGIN_WEIGHT) -> np.ndarray | float:
    """The number compared with the threshold: from the best and second-best identity scores.

    `score`: s1. `margin`: s1 + w (s1 - s2). A missing runner-up (one identity returned, or -inf)
    counts as `FLOOR_SCORE`. Caveat: a person enrolled twice under two names has no margin, so
    their matches are refused.

    Args:
        top_scores: `(m, k)` or `(k,)` fused identity scores per search, highest first, k >= 1.
        rule: one of `RULES`.
        margin_weight: w (>= 0) for `margin`.

    Returns:
        `(m,)` float64 statistics (a float for a `(k,)` input). With `margin` a threshold is on
        this scale (it can exceed 1), not a cosine.
    """
    check_choice("rule", rule, RULES)
    top = np.asarray(top_scores, dtype=np.float64)
    one = top.ndim == 1
    top = top.reshape(1, -1) if one else top
    if top.ndim != 2 or top.shape[1] < 1:
        raise ValueError(f"top_scores must be (m, k) with k >= 1, got shape {np.shape(top_scores)}")
    s1 = top[:, 0]
    if rule == "score":
        out = s1
    else:
        if margin_weight < 0:
            raise ValueError(f"margin_weight must be >= 0, got {margin_weight}")
        s2 = top[:, 1] if top.shape[1] > 1 else np.full(len(top), FLOOR_SCORE)
        out = s1 + margin_weight * (s1 - np.where(np.isfinite(s2), s2, FLOOR_SCORE))
    return float(out[0]) if one else out


@dataclass(frozen=True)
class Decision:
    """How one search is answered: a rule over its fused identity scores, a threshold, its source.

    Attributes:
        threshold: on the rule's scale (a cosine for `score`; s1 + w (s1 - s2) for `margin`).
        rule: one of `RULES`.
        fusion: one of `FUSIONS`: how an identity's faces make its score.
        margin_weight: w of the `margin` rule.
        source: one of `SOURCES`.
        fpir: the FPIR the threshold was calibrated for at the gallery's size; None when it was not.
        method: the calibration's method (`facesearch.index.openset.calibration.METHODS`), or None.
    """

    threshold: float
    rule: str = "score"
    fusion: str = "best"
    margin_weight: float = DEFAULT_MARGIN_WEIGHT
    source: str = "default"
    fpir: float | None = None
    method: str | None = None

    def __post_init__(self) -> None:
        check_choice("rule", self.rule, RULES)
        check_choice("fusion", self.fusion, FUSIONS)
        check_choice("threshold source", self.source, SOURCES)

    @property
    def needs_runner_up(self) -> bool:
        return self.rule == "margin"

    def statistic(self, best: float, runner_up: float | None) -> float:
        """The rule's statistic for a search whose top fused scores are `best` and `runner_up`."""
        top = np.array([best] if runner_up is None else [best, runner_up], np.float64)
        return float(decision_statistic(top, self.rule, self.margin_weight))

    def to_dict(self) -> dict:
        return {"rule": self.rule, "fusion": self.fusion, "margin_weight": self.margin_weight,
                "threshold": self.threshold, "threshold_source": self.source, "fpir": self.fpir,
                "calibration_method": self.method}


def check_vectors(vectors: np.ndarray) -> np.ndarray:
    """`vectors` as C-contiguous float32 `(n, d)`, n >= 1 (ValueError otherwise)."""
    v = np.asarray(vectors)
    if v.ndim != 2 or v.shape[0] == 0 or not np.issubdtype(v.dtype, np.floating):
        raise ValueError(f"vectors must be a non-empty (n, d) float array, got {v.dtype} {v.shape}")
    return np.ascontiguousarray(v, dtype=np.float32)


def check_choice(name: str, value: str, allowed: tuple[str, ...], error: type[Exception] = ValueError) -> None:
    if value not in allowed:
        raise error(f"unknown {name} {value!r}: expected one of {', '.join(allowed)}")
