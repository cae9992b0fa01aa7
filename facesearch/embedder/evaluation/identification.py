"""Identification metrics in pure numpy: closed-set rank-k rates and open-set detection-and-identification.

Each probe comes with its gallery identities ranked best first and their scores (as `query`
returns them). Probes whose identity is not in the gallery are impostors: an open-set system
should answer "unknown" for them, which it does when their best score is below the threshold.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from facesearch.embedder.evaluation.metrics import threshold_at_far

RANKS = (1, 5)
FALSE_ALARM_TARGETS = (1e-3, 1e-2, 1e-1)


@dataclass(frozen=True)
class OpenSetPoint:
    """Open-set figures at one threshold (a probe is answered when its best score `>= threshold`).

    Attributes:
        threshold: the threshold.
        dir: detection-and-identification rate: known probes whose best identity is right and
            scores `>= threshold`, over all known probes.
        far: false alarm rate: impostor probes whose best score is `>= threshold`, over all impostors.
        far_target: the false alarm rate the threshold was chosen for, or None for a given threshold.
    """

    threshold: float
    dir: float
    far: float
    far_target: float | None = None

    def to_dict(self) -> dict:
        return {"far_target": self.far_target, "threshold": self.threshold, "dir": self.dir, "far": self.far}


@dataclass(frozen=True)
class IdentificationReport:
    """Closed-set rank-k rates over the known probes; open-set points when there are impostors."""

    known_probes: int
    unknown_probes: int
    rank_rates: dict[int, float]
    open_set: tuple[OpenSetPoint, ...]

    def to_dict(self) -> dict:
        return {"known_probes": self.known_probes, "unknown_probes": self.unknown_probes,
                "rank_rates": {str(k): v for k, v in self.rank_rates.items()},
                "open_set": [p.to_dict() for p in self.open_set]}


def true_match_ranks(probe_identities: Sequence[str], ranked: Sequence[Sequence[str]],
                     scores: Sequence[Sequence[float]]) -> np.ndarray:
    """The rank of each probe's own identity among its ranked gallery identities.

    Ties count against the probe: the rank is the number of listed identities scoring at least as
    high as the right one, so a right answer tied with a wrong one is rank 2, not 1.

    Args:
        probe_identities: `m` true identities.
        ranked: per probe, distinct gallery identities, best first (any length, may be empty).
        scores: per probe, the scores of `ranked`, non-increasing.

    Returns:
        `(m,)` int64 ranks, 1-based; 0 where the identity is not in the probe's list.

    Raises:
        ValueError: the three sequences differ in length, or a probe's lists do.
    """
    if not len(probe_identities) == len(ranked) == len(scores):
        raise ValueError(f"expected one ranked list per probe, got {len(probe_identities)} probes, "
                         f"{len(ranked)} lists and {len(scores)} score lists")
    ranks = np.zeros(len(probe_identities), np.int64)
    for i, (identity, names, values) in enumerate(zip(probe_identities, ranked, scores)):
        if len(names) != len(values):
            raise ValueError(f"probe {i}: {len(names)} identities but {len(values)} scores")
        if identity in names:
            own = float(values[list(names).index(identity)])
            ranks[i] = int(np.count_nonzero(np.asarray(values, dtype=np.float64) >= own))
    return ranks


def identification_report(probe_identities: Sequence[str], ranked: Sequence[Sequence[str]],
                          scores: Sequence[Sequence[float]], gallery_identities: Collection[str],
                          ranks: Sequence[int] = RANKS, far_targets: Sequence[float] = FALSE_ALARM_TARGETS,
                          thresholds: Sequence[float] = ()) -> IdentificationReport:
    """Closed-set rank-k identification rates and open-set DIR at false alarm rates.

    A probe is "known" when its identity is in `gallery_identities`, else an impostor. Rank-k
    rates count known probes whose identity is within the first k (ties pessimistic, see
    `true_match_ranks`). Open-set: for each FAR target, the lowest threshold that lets at most
    that fraction of impostors' best scores through (`facesearch.embedder.evaluation.metrics.threshold_at_far`), with the
    DIR it gives; then the same figures at each of `thresholds` (e.g. the model card's).

    Args:
        probe_identities, ranked, scores: as `true_match_ranks`; every probe needs a non-empty list.
        gallery_identities: the identities enrolled in the gallery.
        ranks: the k of each rank-k rate.
        far_targets: false alarm rates for the open-set points (needs impostor probes).
        thresholds: extra thresholds to report open-set figures at.

    Returns:
        An `IdentificationReport` (no open-set points when there are no impostor probes).

    Raises:
        ValueError: mismatched input, a probe without any ranked identity, or no known probe.
    """
    found = true_match_ranks(probe_identities, ranked, scores)
    if any(len(values) == 0 for values in scores):
        raise ValueError("every probe needs at least one ranked gallery identity")
    known = np.array([identity in gallery_identities for identity in probe_identities], bool)
    if not known.any():
        raise ValueError(f"none of the {len(probe_identities)} probes has an identity in the gallery")
    best = np.array([float(values[0]) for values in scores])
    rates = {int(k): float(np.mean((found[known] >= 1) & (found[known] <= k))) for k in ranks}
    right = known & (found == 1)  # rank 1 without a tie
    impostor = best[~known]

    def point(threshold: float, target: float | None) -> OpenSetPoint:
        far = float(np.mean(impostor >= threshold)) if impostor.size else float("nan")
        return OpenSetPoint(float(threshold), float(np.sum(right & (best >= threshold)) / known.sum()), far, target)

    points = [point(threshold_at_far(impostor, f, best[known]), float(f)) for f in far_targets] if impostor.size else []
    points += [point(t, None) for t in thresholds]
    return IdentificationReport(int(known.sum()), int((~known).sum()), rates, tuple(points))


# ------------------------------------------------------------------ a decision rule's FPIR/FNIR curve

CURVE_FPIRS = (1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5)


@dataclass(frozen=True)
class DecisionPoint:
    """Open-set figures of a decision statistic at one threshold (answered when `statistic >= threshold`).

    Attributes:
        threshold: on the statistic's scale.
        fpir: false positive identification rate: impostor searches answered with anyone.
        fnir: false negative identification rate: known searches whose identity is not returned
            first at or above the threshold (1 - DIR).
        fpir_target: the rate the threshold was chosen for on the impostors, or None.
    """

    threshold: float
    fpir: float
    fnir: float
    fpir_target: float | None = None

    @property
    def dir(self) -> float:
        return 1.0 - self.fnir

    def to_dict(self) -> dict:
        return {"fpir_target": self.fpir_target, "threshold": self.threshold, "fpir": self.fpir, "fnir": self.fnir,
                "dir": self.dir}


def decision_point(threshold: float, known: np.ndarray, right: np.ndarray, impostor: np.ndarray,
                   fpir_target: float | None = None) -> DecisionPoint:
    """FPIR and FNIR at `threshold`.

    Args:
        threshold: accept when `statistic >= threshold`.
        known: `(k,)` statistics of searches for enrolled people.
        right: `(k,)` bool, whether each of those searches ranked the right identity first.
        impostor: `(n,)` statistics of searches for people not enrolled (n may be 0: FPIR NaN).
    """
    known, impostor = np.asarray(known, np.float64), np.asarray(impostor, np.float64)
    fpir = float(np.mean(impostor >= threshold)) if impostor.size else float("nan")
    fnir = 1.0 - float(np.mean(np.asarray(right, bool) & (known >= threshold))) if known.size else float("nan")
    return DecisionPoint(float(threshold), fpir, fnir, fpir_target)


def decision_curve(known: np.ndarray, right: np.ndarray, impostor: np.ndarray,
                   fpir_targets: Sequence[float] = CURVE_FPIRS) -> list[DecisionPoint]:
    """The FPIR/FNIR trade-off: at each target, the lowest threshold letting at most that share of
    impostors through (`threshold_at_far`, chosen on the impostors themselves: the oracle)."""
    impostor = np.asarray(impostor, np.float64)
    if not impostor.size:
        return []
    return [decision_point(threshold_at_far(impostor, f, known), known, right, impostor, float(f))
            for f in fpir_targets]
