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

Carrying to another gallery size (`carry_fpir`): if a search's identities were independent,
P(best < t) = (1 - FMR(t))^n, hence FPIR_N(t) = 1 - (1 - FPIR_n(t))^(N / n), about linear in N.
Measured on LFW (cache/calibration-research.md) FPIR at a fixed threshold grows more slowly: as
N^0.83 for the best score and N^0.25 for the margin rule (the runner-up rises with N too), and the
pooled 1:1 form 1 - (1 - FMR)^N over-predicted FPIR twofold at N = 1,680. So the rule is used only
where it errs towards fewer false alarms: to raise the threshold when the gallery has grown, within
x1.25 (`needs_recalibration`); a shrunk gallery keeps its threshold; beyond x1.25, recalibrate.

Minimum size: with m independent samples the actual FPIR of an order-statistic threshold is
Beta-distributed around the target with m * target expected exceedances; at 5 the chance of
landing within [target / 2, 2 x target] is about 0.88, below that it falls fast (0.78 at 3). So
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

from facesearch.embedder.core.errors import FaceSearchError
from facesearch.embedder.core.model_card import ModelCard
from facesearch.index.openset.decision import (
    DEFAULT_FUSION,
    DEFAULT_MARGIN_WEIGHT,
    DEFAULT_RULE,
    FUSIONS,
    RULES,
    Decision,
    check_choice,
    check_vectors,
    decision_statistic,
    identity_templates,
)

METHOD_LOIO = "leave-one-identity-out"
METHOD_STRANGERS = "strangers"  # `calibrate --strangers DIR`: real non-enrolled photos, same estimator
METHODS = (METHOD_LOIO, METHOD_STRANGERS)
STRANGER_UNITS = "people in the stranger photos"  # the sampled units of a stranger calibration
DEFAULT_TARGET_FPIR = 0.01
MIN_EXCEEDANCES = 5  # sampled identities x target FPIR must reach this
MAX_SAMPLED_IDENTITIES = 10_000  # 100 exceedances at 1%: about +-10% on the FPIR; cost bounded at any N
FACES_PER_IDENTITY = 2  # LOIO queries per sampled identity (more add little: they are correlated)
RECALIBRATE_FACTOR = 1.25  # recompute when identities or faces change by more than this factor
TAIL_MAX_FPIR = 0.2  # the stored tail answers --fpir up to this rate
TAIL_POINTS = 48
CALIBRATION_VERSION = 1


class CalibrationError(FaceSearchError):
    """A calibration cannot be computed, read or used as asked."""


class GalleryTooSmallError(CalibrationError):
    """Too few identities (or stranger photos) to estimate a threshold at the asked FPIR."""


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
    check_choice("fusion", fusion, FUSIONS)
    if max_identities < 1 or faces_per_identity < 1 or chunk_size < 1:
        raise ValueError(f"max_identities, faces_per_identity and chunk_size must be >= 1, got "
                         f"{max_identities}, {faces_per_identity}, {chunk_size}")
    v = check_vectors(vectors)
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
    gallery = _FusedGallery(v, inverse, fusion)
    out = []
    for lo in range(0, len(queries), chunk_size):
        q = queries[lo:lo + chunk_size]
        s = gallery.scores(v[q])
        s[np.arange(len(q)), inverse[q]] = -np.inf  # leave the own identity out
        rows = np.arange(len(q))
        best = np.argmax(s, axis=1)  # the top two by two passes over the row (a partition costs 4x more)
        first = s[rows, best]
        s[rows, best] = -np.inf
        out.append(decision_statistic(np.stack([first, s.max(axis=1)], axis=1), rule, margin_weight))
    return LooSamples(np.concatenate(out), len(chosen), n_ids - 1, n_ids, len(v), time.perf_counter() - start)


class _FusedGallery:
    """Gallery faces grouped by identity, giving `(m, identities)` fused scores for query vectors."""

    def __init__(self, v: np.ndarray, inverse: np.ndarray, fusion: str):
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


def minimum_identities(target_fpir: float, min_exceedances: float = MIN_EXCEEDANCES) -> int:
    """The fewest sampled identities (or stranger photos) that can calibrate at `target_fpir`."""
    return math.ceil(min_exceedances / target_fpir - 1e-9)


def lowest_supported_fpir(sampled: int, min_exceedances: float = MIN_EXCEEDANCES) -> float:
    """The lowest target FPIR `sampled` identities (or stranger photos) can calibrate, rounded up."""
    return _round_up(min_exceedances / max(sampled, 1))


def check_calibratable(sampled: int, target_fpir: float, *, what: str = "gallery identities",
                       min_exceedances: float = MIN_EXCEEDANCES) -> None:
    """Refuse a calibration whose sample cannot resolve `target_fpir`.

    Raises:
        GalleryTooSmallError: `sampled < minimum_identities(target_fpir)`; says what the minimum
            is and what to do instead.
    """
    if not 0.0 < target_fpir < 1.0:
        raise ValueError(f"target FPIR must be in (0, 1), got {target_fpir}")
    need = minimum_identities(target_fpir, min_exceedances)
    if sampled < need:
        more = ("add photos of more non-enrolled people" if what == STRANGER_UNITS else
                "calibrate on real non-enrolled photos with `facesearch calibrate --strangers DIR`")
        raise GalleryTooSmallError(
            f"cannot calibrate at FPIR {target_fpir:g} from {sampled} {what}: at least {need} are needed "
            f"({min_exceedances:g} / FPIR); give a threshold with --threshold, ask for a higher --fpir "
            f"(these {sampled} support {lowest_supported_fpir(sampled, min_exceedances):g} and above), or {more}")


def threshold_for_fpir(statistics: np.ndarray, target_fpir: float, *, searched_identities: int,
                       gallery_identities: int, sampled_identities: int | None = None,
                       min_exceedances: float = MIN_EXCEEDANCES) -> float:
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
    requested_fpir: float | None = None  # the rate asked for, when the gallery could only resolve a higher one
    version: int = CALIBRATION_VERSION

    @property
    def stored_fpir(self) -> float:
        """The rate this estimate stands for: the one asked for, where the gallery could only resolve a
        higher `target_fpir`. A later commit keeps that target unless another is asked for."""
        return self.requested_fpir or self.target_fpir

    def threshold_at(self, fpir: float | None = None, gallery_identities: int | None = None) -> float:
        """The threshold for `fpir` (default: the target) at a gallery size (default: calibrated).

        A larger gallery raises the threshold by `carry_fpir` (conservative, see the module notes;
        never past the highest threshold the stored tail holds); a smaller one keeps the
        calibrated size's threshold.

        Raises:
            CalibrationError: the stored tail does not reach `fpir` at the calibrated size.
        """
        fpir = self.target_fpir if fpir is None else float(fpir)
        # carried upwards only: FPIR falls as identities leave, so a shrunk gallery keeps its threshold
        n = max(self.gallery_identities, self.gallery_identities if gallery_identities is None else int(gallery_identities))
        if fpir == self.target_fpir and n == self.gallery_identities:
            return self.threshold
        lo, hi = (carry_fpir(f, self.searched_identities, self.gallery_identities)
                  for f in (self.tail_fpir[0], self.tail_fpir[-1]))
        if not lo * (1 - 1e-6) <= fpir <= hi * (1 + 1e-6):
            raise CalibrationError(f"FPIR {fpir:g} is outside what this calibration resolves ({lo:.3g} to {hi:.3g}, "
                                   f"from {self.sampled_identities} sampled identities): give --threshold, or "
                                   "recalibrate with more identities or `calibrate --strangers DIR`")
        rate = min(max(carry_fpir(fpir, n, self.searched_identities), self.tail_fpir[0]), self.tail_fpir[-1])
        threshold = threshold_from_tail(self.tail_fpir, self.tail_threshold, rate)
        return max(threshold, self.threshold) if fpir == self.target_fpir else threshold

    def decision(self, fpir: float | None = None, gallery_identities: int | None = None) -> Decision:
        """The `Decision` a query makes with this calibration at `fpir` (default: the target).

        Raises:
            CalibrationError: the stored tail does not reach `fpir`.
        """
        asked = fpir is not None and float(fpir) != self.target_fpir
        return Decision(self.threshold_at(fpir, gallery_identities), self.rule, self.fusion, self.margin_weight,
                        "--fpir" if asked else "calibration", float(fpir) if asked else self.target_fpir, self.method)

    def describe(self) -> str:
        """One line: threshold, target, rule, and what it was computed from."""
        what = ("leave-one-identity-out searches of" if self.method == METHOD_LOIO else "searches of stranger photos "
                "against")
        return (f"threshold {self.threshold:.4f} for FPIR {self.target_fpir:g} ({self.rule} rule, {self.fusion} "
                f"fusion), from {self.samples} {what} a gallery of {self.gallery_identities} identities "
                f"({self.gallery_faces} faces; {self.sampled_identities} sampled, {self.seconds:.2f} s)")

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
        check_choice("method", c.method, METHODS, CalibrationError)
        check_choice("rule", c.rule, RULES, CalibrationError)
        check_choice("fusion", c.fusion, FUSIONS, CalibrationError)
        if len(c.tail_fpir) != len(c.tail_threshold) or not c.tail_fpir:
            raise CalibrationError("the index's calibration tail is malformed: run `facesearch calibrate` again")
        return c


def calibration_from_samples(samples: LooSamples, *, target_fpir: float = DEFAULT_TARGET_FPIR,
                             method: str = METHOD_LOIO, fusion: str = DEFAULT_FUSION, rule: str = DEFAULT_RULE,
                             margin_weight: float = DEFAULT_MARGIN_WEIGHT, seed: int | None = 0,
                             min_exceedances: float = MIN_EXCEEDANCES) -> Calibration:
    """A `Calibration` from LOIO samples (or real strangers' statistics wrapped in `LooSamples`).

    Args:
        min_exceedances: expected exceedances the sample must hold at the target (see
            `check_calibratable`); below `MIN_EXCEEDANCES` only for a deliberately rough estimate
            (the demo's 20 people).

    Raises:
        GalleryTooSmallError: too few sampled identities for `target_fpir`.
    """
    check_choice("method", method, METHODS)
    x = samples.statistics
    what = "gallery identities" if method == METHOD_LOIO else STRANGER_UNITS
    check_calibratable(samples.sampled_identities, target_fpir, what=what, min_exceedances=min_exceedances)
    threshold = threshold_for_fpir(x, target_fpir, searched_identities=samples.searched_identities,
                                   gallery_identities=samples.gallery_identities,
                                   sampled_identities=samples.sampled_identities, min_exceedances=min_exceedances)
    lowest = carry_fpir(min(min_exceedances / samples.sampled_identities, target_fpir), samples.gallery_identities,
                        samples.searched_identities)  # the target's floor, as the searches saw it
    highest = carry_fpir(max(TAIL_MAX_FPIR, min(0.5, 2 * target_fpir)), samples.gallery_identities,
                         samples.searched_identities)  # up to 20%, or twice a higher target
    fpir, thr = tail_summary(x, min_fpir=lowest, max_fpir=highest)
    return Calibration(method, float(target_fpir), threshold, rule, fusion, float(margin_weight),
                       samples.gallery_identities, samples.gallery_faces, samples.searched_identities,
                       samples.sampled_identities, len(x), fpir, thr, round(samples.seconds, 3), seed)


def resolve_decision(card: ModelCard, calibration: dict | None, gallery_identities: int, *,
                     threshold: float | None = None, fpir: float | None = None) -> Decision:
    """The decision a query makes, by precedence: `threshold`, then `fpir`, then the index's calibration,
    then the model card's pair threshold.

    `threshold` is a plain best-score cut-off (the `score` rule over each identity's best face), as
    `query --threshold` has always meant; `fpir` and the calibration use the calibrated rule.

    Args:
        card: the model card whose thresholds apply without a calibration (its calibrated pair
            threshold, else 0.3).
        calibration: the manifest's "calibration" entry (or None).
        gallery_identities: the index's identities now (a grown gallery carries the threshold).
        threshold: `query --threshold`.
        fpir: `query --fpir`.

    Raises:
        CalibrationError: `fpir` without a calibration, a rate the calibration cannot resolve, or a
            malformed calibration record.
    """
    if threshold is not None:
        return Decision(float(threshold), source="--threshold")
    if fpir is not None and calibration is None:
        raise CalibrationError(f"--fpir {fpir:g} needs a calibrated index and this one has none: run `facesearch "
                               "calibrate` (or `calibrate --strangers DIR`), or give --threshold")
    if calibration is not None:
        return Calibration.from_dict(calibration).decision(fpir, gallery_identities)
    calibrated = any(key in card.thresholds for key in ("far_1e-3", "best_accuracy"))
    return Decision(card.default_threshold, source="model-card" if calibrated else "default")


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


def _round_up(x: float, digits: int = 2) -> float:
    """`x` rounded up to `digits` significant digits (a rate that is really supported)."""
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(x)))
    return math.ceil(x * scale - 1e-9) / scale
