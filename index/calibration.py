"""Open-set self-calibration: the threshold that keeps strangers out at a target FPIR, from the gallery alone.

A stranger searched against N enrolled identities gets N chances to match someone, so a pair
threshold (the model card's) lets most strangers through a large gallery. This module estimates,
without any stranger photo, the score a stranger's best match reaches, and from it the threshold
for a target FPIR (share of non-enrolled searches answered with anyone).

Method (leave one identity out, "LOIO"): the enrolled faces of an identity, searched against the
rest of the gallery, are strangers to a gallery of N - 1 identities. For a sample of identities
(all of them up to `MAX_SAMPLED_IDENTITIES`), up to `FACES_PER_IDENTITY` of their faces are
searched with their own identity left out; each search gives one decision statistic (see
`decision_statistic`). The threshold is the median-unbiased upper `target` quantile of those
statistics (Hyndman & Fan type 8): the actual FPIR then lands above and below the target equally
often. Sampling the *queries* keeps the cost at m searches whatever N is, while every search still
sees the whole gallery, so no extrapolation in N is needed at calibration time.

Carrying to another gallery size (`carry_fpir`): with per-search maxima over n independent
identities, P(best < t) = (1 - FMR(t))^n, hence FPIR_N(t) = 1 - (1 - FPIR_n(t))^(N / n); for small
rates FPIR grows linearly with N. Assumptions: identities are exchangeable and their scores against
one query independent. Measured on LFW (cache/calibration-research.md): for the plain best score
the rule tracks direct measurement; for the margin rule the true growth is slower (the runner-up
rises with N too), so the rule over-predicts growth, which errs towards fewer false alarms. It is
only used between recalibrations (`needs_recalibration`: a gallery change beyond x1.25 either way).

Minimum size: with m independent samples the actual FPIR of an order-statistic threshold is
Beta-distributed around the target with m * target expected exceedances; at 5 the chance of
landing within [target / 2, 2 x target] is about 0.87, below that it falls fast (0.75 at 3). So
calibration needs m >= 5 / target sampled identities (500 at 1%) and is refused otherwise.

Vocabulary: FPIR = share of non-enrolled searches returning any identity at or above the threshold;
DIR = share of enrolled searches whose true identity comes first at or above it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from embedder.core.errors import FaceSearchError

METHOD_LOIO = "leave-one-identity-out"
METHOD_STRANGERS = "strangers"  # `calibrate --strangers DIR`: real non-enrolled photos, same estimator
METHODS = (METHOD_LOIO, METHOD_STRANGERS)
FUSIONS = ("best", "top2", "template")
RULES = ("score", "margin")
DEFAULT_TARGET_FPIR = 0.01
DEFAULT_FUSION = "template"  # won on View-1 DevTrain with 2 photos enrolled; equals "best" with 1 photo
DEFAULT_RULE = "margin"
DEFAULT_MARGIN_WEIGHT = 1.0  # statistic s1 + w (s1 - s2); chosen on DevTrain without strangers
MIN_EXCEEDANCES = 5  # sampled identities x target FPIR must reach this
MAX_SAMPLED_IDENTITIES = 10_000  # 100 exceedances at 1%: about +-10% on the FPIR; cost bounded at any N
FACES_PER_IDENTITY = 2  # LOIO queries per sampled identity (more add little: they are correlated)
RECALIBRATE_FACTOR = 1.25  # recompute when identities or faces change by more than this factor
TAIL_MAX_FPIR = 0.2  # the stored tail answers --fpir up to this rate
TAIL_POINTS = 48
FLOOR_SCORE = -1.0  # the runner-up score when a search returns a single identity
CALIBRATION_VERSION = 1


class CalibrationError(FaceSearchError):
    """A calibration cannot be computed, read or used as asked."""


class GalleryTooSmallError(CalibrationError):
    """Too few identities (or stranger photos) to estimate a threshold at the asked FPIR."""


# ------------------------------------------------------------------ decisions over one search


def fuse_identity_scores(scores: np.ndarray, identities: Sequence[Hashable],
                         fusion: str = "best") -> tuple[list[Hashable], np.ndarray]:
    """One identity score per identity from a query's neighbour faces, best first.

    `best`: the identity's highest face score. `top2`: the mean of its two highest (its one score
    when only one of its faces is among the neighbours: ask for enough neighbours). `template`: the
    neighbours are already identity templates (`identity_templates`), one per identity; a gallery
    using it keeps a second index of templates, updated when an identity's faces change.

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
    _check_choice("fusion", fusion, FUSIONS)
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
    v = _check_vectors(vectors)
    labels, inverse = np.unique(np.asarray(identities), return_inverse=True)
    sums = np.zeros((len(labels), v.shape[1]), np.float64)
    np.add.at(sums, inverse.reshape(-1), v)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return labels, (sums / np.maximum(norms, 1e-12)).astype(np.float32)


def decision_statistic(top_scores: np.ndarray, rule: str = DEFAULT_RULE,
                       margin_weight: float = DEFAULT_MARGIN_WEIGHT) -> np.ndarray:
    """The number compared with the threshold: from the best and second-best identity scores.

    `score`: s1. `margin`: s1 + w (s1 - s2): a best match far ahead of the runner-up counts as
    more certain; with w = 1 the LFW DIR at 1% FPIR rose from 0.49 to 0.65 (one photo enrolled).
    A missing runner-up (one identity returned, or -inf) counts as `FLOOR_SCORE`. Caveat: an
    identity enrolled twice under two names has no margin, so its matches are refused.

    Args:
        top_scores: `(m, k)` or `(k,)` fused identity scores per search, highest first, k >= 1.
        rule: one of `RULES`.
        margin_weight: w (>= 0) for `margin`.

    Returns:
        `(m,)` float64 statistics, or a 0-d array for one search.
    """
    _check_choice("rule", rule, RULES)
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
    return out[0] if one else out


# ------------------------------------------------------------------ leave one identity out


@dataclass(frozen=True)
class LooSamples:
    """Decision statistics of stranger-like searches, and what the searches saw."""

    statistics: np.ndarray  # (m,) float64, one per search
    sampled_identities: int  # identities whose faces were searched (independent units)
    searched_identities: int  # gallery identities each search saw (N - 1 for LOIO)
    gallery_identities: int
    gallery_faces: int
    seconds: float


def leave_one_identity_out(vectors: np.ndarray, identities: Sequence[Hashable], *, fusion: str = DEFAULT_FUSION,
                           rule: str = DEFAULT_RULE, margin_weight: float = DEFAULT_MARGIN_WEIGHT,
                           max_identities: int = MAX_SAMPLED_IDENTITIES, faces_per_identity: int = FACES_PER_IDENTITY,
                           seed: int = 0, chunk_size: int = 512) -> LooSamples:
    """Brute-force LOIO searches: the numpy reference an index's own (FAISS) version must match.

    Each sampled identity's faces (up to `faces_per_identity`, seeded choice) are scored against
    every other identity with `fusion`; the own identity is left out; the top two give the statistic.
    Cost: m x n x d multiply-adds for m query faces and n gallery faces.

    Args:
        vectors: `(n, d)` float32, rows L2-normalised: every enrolled face.
        identities: `n` labels.
        fusion, rule, margin_weight: as `fuse_identity_scores` / `decision_statistic`.
        max_identities: identities sampled as strangers (all of them when there are fewer).
        faces_per_identity: query faces per sampled identity.
        seed: for the samples.
        chunk_size: queries per matrix product (memory: chunk_size x n float32).

    Raises:
        GalleryTooSmallError: fewer than 3 identities.
    """
    start = time.perf_counter()
    _check_choice("fusion", fusion, FUSIONS)
    v = _check_vectors(vectors)
    if len(identities) != len(v):
        raise ValueError(f"got {len(v)} vectors but {len(identities)} identities")
    _, inverse = np.unique(np.asarray(identities), return_inverse=True)
    inverse = inverse.reshape(-1)
    n_ids = int(inverse.max()) + 1 if len(inverse) else 0
    if n_ids < 3:
        raise GalleryTooSmallError(f"leave-one-identity-out needs at least 3 identities, the gallery has {n_ids}")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n_ids, max_identities, replace=False)) if n_ids > max_identities else np.arange(n_ids)
    faces_of = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse, minlength=n_ids))[:-1])
    queries = np.concatenate([f if len(f) <= faces_per_identity else np.sort(rng.choice(f, faces_per_identity, replace=False))
                              for f in (faces_of[i] for i in chosen)])
    gallery = _FusedGallery(v, inverse, n_ids, fusion)
    out = []
    for lo in range(0, len(queries), chunk_size):
        q = queries[lo:lo + chunk_size]
        s = gallery.scores(v[q])
        s[np.arange(len(q)), inverse[q]] = -np.inf  # leave the own identity out
        top = -np.partition(-s, 1, axis=1)[:, :2]
        out.append(decision_statistic(np.sort(top, axis=1)[:, ::-1], rule, margin_weight))
    return LooSamples(np.concatenate(out), len(chosen), n_ids - 1, n_ids, len(v), time.perf_counter() - start)


class _FusedGallery:
    """Gallery faces grouped by identity, giving `(m, identities)` fused scores for query vectors."""

    def __init__(self, v: np.ndarray, inverse: np.ndarray, n_ids: int, fusion: str):
        order = np.argsort(inverse, kind="stable")
        self.fusion, self.v = fusion, v[order]
        self.starts = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0])
        self.counts = np.diff(np.r_[self.starts, len(order)])
        if fusion == "template":
            self.templates = identity_templates(v, inverse)[1]

    def scores(self, q: np.ndarray) -> np.ndarray:
        if self.fusion == "template":
            return (q @ self.templates.T).astype(np.float64)
        s = q @ self.v.T
        m1 = np.maximum.reduceat(s, self.starts, axis=1)
        if self.fusion == "best":
            return m1.astype(np.float64)
        top = s >= np.repeat(m1, self.counts, axis=1)
        ties = np.add.reduceat(top, self.starts, axis=1)
        m2 = np.maximum.reduceat(np.where(top, -np.inf, s), self.starts, axis=1)
        m2 = np.where((ties >= 2) | (self.counts == 1), m1, m2)  # a tie is its own runner-up
        return (m1.astype(np.float64) + m2) / 2


# ------------------------------------------------------------------ thresholds


def carry_fpir(fpir: float, from_identities: int, to_identities: int) -> float:
    """FPIR at `to_identities` of a threshold with `fpir` at `from_identities`: 1 - (1 - F)^(to / from).

    The max-of-independent-identities rule (module docstring); exact for one gallery per search
    when identities are exchangeable and independent given the query, conservative for growth with
    the margin rule.
    """
    if not 0.0 <= fpir <= 1.0 or from_identities < 1 or to_identities < 1:
        raise ValueError(f"expected an FPIR in [0, 1] and sizes >= 1, got {fpir}, {from_identities}, {to_identities}")
    return float(-math.expm1(math.log1p(-fpir) * to_identities / from_identities)) if fpir < 1.0 else 1.0


def minimum_identities(target_fpir: float, min_exceedances: int = MIN_EXCEEDANCES) -> int:
    """The fewest sampled identities (or stranger photos) that can calibrate at `target_fpir`."""
    return math.ceil(min_exceedances / target_fpir - 1e-9)


def check_calibratable(sampled: int, target_fpir: float, *, what: str = "gallery identities",
                       min_exceedances: int = MIN_EXCEEDANCES) -> None:
    """Refuse a calibration whose sample cannot resolve `target_fpir`.

    Raises:
        GalleryTooSmallError: `sampled < minimum_identities(target_fpir)`; says what to do instead.
    """
    if not 0.0 < target_fpir < 1.0:
        raise ValueError(f"target FPIR must be in (0, 1), got {target_fpir}")
    need = minimum_identities(target_fpir, min_exceedances)
    if sampled < need:
        raise GalleryTooSmallError(
            f"cannot self-calibrate at FPIR {target_fpir:g} from {sampled} {what}: at least {need} are needed "
            f"({min_exceedances} / FPIR); give a threshold with --threshold, ask for a higher --fpir "
            f"(this gallery supports {min_exceedances / max(sampled, 1):.2g} and above), or calibrate on real "
            "non-enrolled photos with `facesearch calibrate --strangers DIR`")


def threshold_for_fpir(statistics: np.ndarray, target_fpir: float, *, searched_identities: int,
                       gallery_identities: int, sampled_identities: int | None = None,
                       min_exceedances: int = MIN_EXCEEDANCES) -> float:
    """The threshold whose FPIR at `gallery_identities` is `target_fpir`, from stranger-like statistics.

    The target is first carried to the size each search saw (`carry_fpir`, N -> N - 1 for LOIO),
    then the median-unbiased upper quantile of `statistics` at that rate is taken (type 8).

    Args:
        statistics: `(m,)` decision statistics of LOIO (or real stranger) searches.
        target_fpir: in (0, 1).
        searched_identities: identities each search saw.
        gallery_identities: N, the gallery the threshold is for.
        sampled_identities: independent units behind `statistics` (default: its length).
        min_exceedances: see `check_calibratable`.

    Raises:
        GalleryTooSmallError: too few sampled identities for `target_fpir`.
    """
    x = np.asarray(statistics, dtype=np.float64).reshape(-1)
    if not np.isfinite(x).all():
        raise ValueError("statistics must be finite (a search with no other identity has no stranger score)")
    check_calibratable(len(x) if sampled_identities is None else sampled_identities, target_fpir,
                       min_exceedances=min_exceedances)
    rate = carry_fpir(target_fpir, gallery_identities, searched_identities)
    return float(np.quantile(x, 1.0 - rate, method="median_unbiased"))


def tail_summary(statistics: np.ndarray, *, min_fpir: float, max_fpir: float = TAIL_MAX_FPIR,
                 points: int = TAIL_POINTS) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The upper tail of the statistics as (FPIR, threshold) pairs on a log grid, for later look-ups.

    Small at any gallery size: `points` pairs (the sample size is capped, not the gallery).
    Thresholds are rounded to 1e-6 (far below their sampling error).
    """
    x = np.asarray(statistics, dtype=np.float64).reshape(-1)
    hi = min(max_fpir, 1.0 - 1.0 / max(len(x), 2))
    lo = min(min_fpir, hi)
    grid = np.geomspace(lo, hi, points) if hi > lo else np.array([lo])
    thresholds = np.quantile(x, 1.0 - grid, method="median_unbiased")
    return tuple(float(f"{f:.6g}") for f in grid), tuple(round(float(t), 6) for t in thresholds)


def threshold_from_tail(tail_fpir: Sequence[float], tail_threshold: Sequence[float], fpir: float) -> float:
    """Interpolate a stored tail at `fpir` (linear in log FPIR).

    Raises:
        CalibrationError: `fpir` outside the stored range (the sample cannot resolve it).
    """
    f, t = np.asarray(tail_fpir, np.float64), np.asarray(tail_threshold, np.float64)
    if not f[0] * (1 - 1e-6) <= fpir <= f[-1] * (1 + 1e-6):
        raise CalibrationError(f"FPIR {fpir:g} is outside what this calibration resolves ({f[0]:.3g} to {f[-1]:.3g}): "
                               "give --threshold, or recalibrate with more identities or `calibrate --strangers DIR`")
    return float(np.interp(np.log(fpir), np.log(f), t)) if len(f) > 1 else float(t[0])


# ------------------------------------------------------------------ what the manifest stores


@dataclass(frozen=True)
class Calibration:
    """An index's open-set calibration, stored in its manifest under "calibration"."""

    method: str  # METHODS
    target_fpir: float
    threshold: float  # for target_fpir at gallery_identities
    rule: str
    fusion: str
    margin_weight: float
    gallery_identities: int  # the gallery it was computed for
    gallery_faces: int
    searched_identities: int  # identities each search saw (N - 1 for LOIO)
    sampled_identities: int  # independent units (identities, or stranger photos)
    samples: int  # searches
    tail_fpir: tuple[float, ...]  # at searched_identities
    tail_threshold: tuple[float, ...]
    seconds: float = 0.0
    seed: int | None = 0
    version: int = CALIBRATION_VERSION

    def threshold_at(self, fpir: float | None = None, gallery_identities: int | None = None) -> float:
        """The threshold for `fpir` (default: the target) at a gallery size (default: calibrated).

        Raises:
            CalibrationError: the stored tail does not reach `fpir`.
        """
        fpir = self.target_fpir if fpir is None else float(fpir)
        n = self.gallery_identities if gallery_identities is None else int(gallery_identities)
        if fpir == self.target_fpir and n == self.gallery_identities:
            return self.threshold
        return threshold_from_tail(self.tail_fpir, self.tail_threshold, carry_fpir(fpir, n, self.searched_identities))

    def needs_recalibration(self, gallery_identities: int, gallery_faces: int,
                            factor: float = RECALIBRATE_FACTOR) -> bool:
        """True when identities or faces changed by more than `factor` either way since calibration.

        FPIR at a fixed threshold moves about in proportion to N, so x1.25 shifts it by <= 25%,
        below the sampling spread of a 500-2,000-identity calibration; within that band
        `threshold_at` carries the threshold with `carry_fpir`.
        """
        ratios = (gallery_identities / max(self.gallery_identities, 1), gallery_faces / max(self.gallery_faces, 1))
        return any(r > factor or r < 1.0 / factor for r in ratios)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tail"] = {"fpir": list(d.pop("tail_fpir")), "threshold": list(d.pop("tail_threshold"))}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        """Raises: CalibrationError: unknown version, missing or malformed fields."""
        try:
            if d.get("version") != CALIBRATION_VERSION:
                raise CalibrationError(f"calibration version {d.get('version')!r} is not {CALIBRATION_VERSION}: "
                                       "run `facesearch calibrate` again")
            fields = {k: v for k, v in d.items() if k != "tail"}
            c = cls(**fields, tail_fpir=tuple(map(float, d["tail"]["fpir"])),
                    tail_threshold=tuple(map(float, d["tail"]["threshold"])))
        except (KeyError, TypeError) as e:
            raise CalibrationError(f"the index's calibration record is malformed ({e}): run `facesearch calibrate` "
                                   "again") from e
        _check_choice("method", c.method, METHODS, CalibrationError)
        _check_choice("rule", c.rule, RULES, CalibrationError)
        _check_choice("fusion", c.fusion, FUSIONS, CalibrationError)
        if len(c.tail_fpir) != len(c.tail_threshold) or not c.tail_fpir:
            raise CalibrationError("the index's calibration tail is malformed: run `facesearch calibrate` again")
        return c


def calibration_from_samples(samples: LooSamples, *, target_fpir: float = DEFAULT_TARGET_FPIR,
                             method: str = METHOD_LOIO, fusion: str = DEFAULT_FUSION, rule: str = DEFAULT_RULE,
                             margin_weight: float = DEFAULT_MARGIN_WEIGHT, seed: int | None = 0) -> Calibration:
    """A `Calibration` from LOIO samples (or real strangers' statistics wrapped in `LooSamples`).

    Raises:
        GalleryTooSmallError: too few sampled identities for `target_fpir`.
    """
    _check_choice("method", method, METHODS)
    x = samples.statistics
    what = "gallery identities" if method == METHOD_LOIO else "stranger photos"
    check_calibratable(samples.sampled_identities, target_fpir, what=what)
    threshold = threshold_for_fpir(x, target_fpir, searched_identities=samples.searched_identities,
                                   gallery_identities=samples.gallery_identities,
                                   sampled_identities=samples.sampled_identities)
    lowest = carry_fpir(MIN_EXCEEDANCES / samples.sampled_identities, samples.gallery_identities,
                        samples.searched_identities)  # the target's floor, as the searches saw it
    fpir, thr = tail_summary(x, min_fpir=lowest)
    return Calibration(method, float(target_fpir), threshold, rule, fusion, float(margin_weight),
                       samples.gallery_identities, samples.gallery_faces, samples.searched_identities,
                       samples.sampled_identities, len(x), fpir, thr, round(samples.seconds, 3), seed)


def calibrate_gallery(vectors: np.ndarray, identities: Sequence[Hashable], *,
                      target_fpir: float = DEFAULT_TARGET_FPIR, fusion: str = DEFAULT_FUSION,
                      rule: str = DEFAULT_RULE, margin_weight: float = DEFAULT_MARGIN_WEIGHT,
                      max_identities: int = MAX_SAMPLED_IDENTITIES, seed: int = 0) -> Calibration:
    """Self-calibrate a gallery held in memory: brute-force LOIO, then `calibration_from_samples`.

    Raises:
        GalleryTooSmallError: fewer than `minimum_identities(target_fpir)` identities.
    """
    n_ids = len(set(identities))
    check_calibratable(min(n_ids, max_identities), target_fpir)
    samples = leave_one_identity_out(vectors, identities, fusion=fusion, rule=rule, margin_weight=margin_weight,
                                     max_identities=max_identities, seed=seed)
    return calibration_from_samples(samples, target_fpir=target_fpir, fusion=fusion, rule=rule,
                                    margin_weight=margin_weight, seed=seed)


# ------------------------------------------------------------------ checks


def _check_vectors(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors)
    if v.ndim != 2 or v.shape[0] == 0 or not np.issubdtype(v.dtype, np.floating):
        raise ValueError(f"vectors must be a non-empty (n, d) float array, got {v.dtype} {v.shape}")
    return np.ascontiguousarray(v, dtype=np.float32)


def _check_choice(name: str, value: str, allowed: tuple[str, ...], error: type[Exception] = ValueError) -> None:
    if value not in allowed:
        raise error(f"unknown {name} {value!r}: expected one of {', '.join(allowed)}")
