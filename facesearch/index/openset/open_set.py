"""Open-set calibration of an index: leave-one-identity-out through its own search, stranger photos, and when to redo it.

The estimator is `facesearch.index.openset.calibration` (pure numpy); this module runs its searches through an open
gallery (so approximate segments are calibrated as queries will see them) and decides, at each
commit of `facesearch.index.storage.writer`, whether the stored estimate still holds (`calibrate_on_commit`):

- no estimate yet: compute one at the target FPIR (1% unless `build-index --fpir` asks another);
  a gallery too small for the default target is calibrated at the lowest rate it supports, up to
  `AUTO_MAX_FPIR`; below that it stays uncalibrated and queries use the model card's threshold;
- identities and faces within x1.25 of what it was computed for: kept (`query` carries it to the
  current size, upwards only); a small enrolment therefore costs nothing here;
- beyond: computed again (at most `MAX_SAMPLED_IDENTITIES` sampled identities x 2 faces).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from facesearch.index.openset.calibration import (
    DEFAULT_TARGET_FPIR,
    FACES_PER_IDENTITY,
    MAX_SAMPLED_IDENTITIES,
    METHOD_STRANGERS,
    MIN_EXCEEDANCES,
    STRANGER_UNITS,
    Calibration,
    CalibrationError,
    GalleryTooSmallError,
    LooSamples,
    calibration_from_samples,
    check_calibratable,
    lowest_supported_fpir,
    minimum_identities,
)
from facesearch.index.openset.decision import DEFAULT_FUSION, DEFAULT_MARGIN_WEIGHT, DEFAULT_RULE, Decision
from facesearch.index.openset.ranking import IdentityFaces, rank_batch

AUTO_MAX_FPIR = 0.05  # the highest rate a gallery too small for the default target is calibrated at
BATCH = 256  # searches per batch


@dataclass(frozen=True)
class Rule:
    """The decision a calibration is for (its threshold is on this rule's statistic)."""

    rule: str = DEFAULT_RULE
    fusion: str = DEFAULT_FUSION
    margin_weight: float = DEFAULT_MARGIN_WEIGHT

    def decision(self) -> Decision:
        return Decision(0.0, self.rule, self.fusion, self.margin_weight, "calibration")


def searchable_identities(gallery) -> list[str]:
    """Identities with at least one live face, sorted (those a search can return)."""
    return [name for name, _, faces in gallery.store.identities() if faces > 0]


def loio_samples(gallery, *, rule: Rule = Rule(), max_identities: int = MAX_SAMPLED_IDENTITIES,
                 faces_per_identity: int = FACES_PER_IDENTITY, seed: int = 0,
                 faces: IdentityFaces | None = None) -> LooSamples:
    """Leave-one-identity-out searches through the gallery's own search.

    Each sampled identity's faces (up to `faces_per_identity`, seeded) are searched with their own
    identity left out; each search's decision statistic is one sample. Identities and faces are
    chosen exactly as `facesearch.index.openset.calibration.leave_one_identity_out` chooses them (identities by
    name, faces by id), so the two agree on an exact index.

    Raises:
        GalleryTooSmallError: fewer than 3 identities with a face.
    """
    start = time.perf_counter()
    names = searchable_identities(gallery)
    if len(names) < 3:
        raise GalleryTooSmallError(f"leave-one-identity-out needs at least 3 identities with a face, the gallery "
                                   f"has {len(names)}")
    rng = np.random.default_rng(seed)
    n = len(names)
    chosen = np.sort(rng.choice(n, max_identities, replace=False)) if n > max_identities else np.arange(n)
    if faces is None:
        faces = IdentityFaces(gallery)
        if len(chosen) > 1_000:  # most identities will be candidates: read every face's identity at once
            faces.preload()
    query_ids, owners = [], []
    for i in chosen.tolist():
        ids = faces.ids_of(names[i])
        if len(ids) > faces_per_identity:
            ids = np.sort(rng.choice(ids, faces_per_identity, replace=False))
        query_ids.extend(ids.tolist())
        owners.extend([names[i]] * len(ids))
    statistics = _statistics(gallery, gallery.vectors(query_ids), rule, owners, faces)
    return LooSamples(statistics, len(chosen), n - 1, n, len(gallery), time.perf_counter() - start)


def _statistics(gallery, vectors: np.ndarray, rule: Rule, exclude: Sequence[str] | None,
                faces: IdentityFaces | None) -> np.ndarray:
    if faces is None:
        faces = IdentityFaces(gallery)
        if len(vectors) > 2_000:  # most identities will be candidates: read every face's identity at once
            faces.preload()
    out = []
    for lo in range(0, len(vectors), BATCH):
        batch = rank_batch(gallery, vectors[lo:lo + BATCH], k=1, decision=rule.decision(), faces=faces,
                           exclude=None if exclude is None else exclude[lo:lo + BATCH])
        out.extend(r.statistic for r in batch)
    return np.asarray(out, np.float64)


def calibrate_index(gallery, target_fpir: float = DEFAULT_TARGET_FPIR, *, rule: Rule = Rule(),
                    max_identities: int = MAX_SAMPLED_IDENTITIES, seed: int = 0,
                    min_exceedances: float = MIN_EXCEEDANCES, faces: IdentityFaces | None = None) -> Calibration:
    """Self-calibrate an open gallery at `target_fpir` (leave-one-identity-out, no stranger photo).

    Raises:
        GalleryTooSmallError: fewer sampled identities than `target_fpir` needs; says the minimum
            and what to do (checked before any search).
    """
    available = min(len(searchable_identities(gallery)), max_identities)
    check_calibratable(available, target_fpir, min_exceedances=min_exceedances)
    samples = loio_samples(gallery, rule=rule, max_identities=max_identities, seed=seed, faces=faces)
    return calibration_from_samples(samples, target_fpir=target_fpir, fusion=rule.fusion, rule=rule.rule,
                                    margin_weight=rule.margin_weight, seed=seed, min_exceedances=min_exceedances)


def calibrate_with_strangers(gallery, vectors: np.ndarray, people: Sequence[str], target_fpir: float, *,
                             rule: Rule = Rule()) -> Calibration:
    """A direct measurement: photos of people who are not enrolled, searched against the whole gallery.

    Args:
        gallery: the open gallery.
        vectors: `(m, d)` float32, one face per stranger photo, rows L2-normalised.
        people: `m` person labels (several photos of one person count as one sampled unit).
        target_fpir: the rate the threshold is for.

    Raises:
        GalleryTooSmallError: too few stranger people for `target_fpir` (5 / FPIR).
        CalibrationError: no stranger photo, or the gallery has no identity with a face.
    """
    start = time.perf_counter()
    if len(vectors) == 0:
        raise CalibrationError("no stranger photo gave a face vector: nothing to calibrate on")
    n = len(searchable_identities(gallery))
    if n == 0:
        raise CalibrationError("the gallery has no identity with a face: nothing to calibrate")
    sampled = len(set(people))
    check_calibratable(sampled, target_fpir, what=STRANGER_UNITS)
    statistics = _statistics(gallery, np.asarray(vectors, np.float32), rule, None, None)
    samples = LooSamples(statistics, sampled, n, n, len(gallery), time.perf_counter() - start)
    return calibration_from_samples(samples, target_fpir=target_fpir, method=METHOD_STRANGERS, fusion=rule.fusion,
                                    rule=rule.rule, margin_weight=rule.margin_weight, seed=None)


# ------------------------------------------------------------------ at every commit


@dataclass
class CalibrationOutcome:
    """What a commit did about the index's calibration.

    `action`: "calibrated" (computed now), "kept" (still within x1.25), "stored" (given, e.g.
    measured on strangers), "refused" (the gallery cannot resolve the rate; previous kept or
    none), "failed" (an error; the previous estimate is kept), "none" (too small to calibrate).
    """

    calibration: dict | None
    action: str
    message: str
    seconds: float = 0.0

    def to_dict(self) -> dict:
        c = self.calibration
        return {"action": self.action, "message": self.message, "seconds": round(self.seconds, 3),
                "threshold": None if c is None else c["threshold"], "target_fpir": None if c is None else c["target_fpir"],
                "method": None if c is None else c["method"]}


def _read(previous: dict | None) -> tuple[Calibration | None, str]:
    try:
        return (Calibration.from_dict(previous) if previous is not None else None), ""
    except CalibrationError as e:
        return None, f" (the stored one was unreadable: {e})"


def _target(old: Calibration | None, requested_fpir: float | None) -> float:
    if requested_fpir is not None:
        return requested_fpir
    return old.stored_fpir if old is not None else DEFAULT_TARGET_FPIR


def unchanged_calibration(stored: dict | None) -> dict:
    """`CalibrationOutcome.to_dict()` of a build that wrote nothing: the stored estimate, as it was."""
    old, problem = _read(stored)
    message = f"unchanged: {old.describe()}" if old is not None else f"unchanged: not calibrated{problem}"
    return CalibrationOutcome(stored, "unchanged", message).to_dict()


def target_differs(previous: dict | None, fpir: float | None) -> bool:
    """Whether asking for `fpir` calls for a commit: no estimate yet, or one for another target."""
    if fpir is None:
        return False
    old, _ = _read(previous)
    return old is None or old.stored_fpir != fpir


def settled(previous: dict | None, identities: int, faces: int, *, requested_fpir: float | None = None,
            force: bool = False) -> CalibrationOutcome | None:
    """The outcome of a commit that needs no search (from counts alone), else None: compute it.

    Kept: the stored estimate is for the same target and within x1.25 of `identities` and
    `faces`. None needed: no estimate, no rate asked, and fewer identities than any automatic
    calibration needs (`AUTO_MAX_FPIR`). This is all a small enrolment costs.
    """
    old, _ = _read(previous)
    wanted = _target(old, requested_fpir)
    if old is not None and not force and old.stored_fpir == wanted \
            and not old.needs_recalibration(identities, faces):
        return CalibrationOutcome(previous, "kept", f"kept: {identities} identities, {faces} faces, within x1.25 of "
                                  f"the {old.gallery_identities} and {old.gallery_faces} it was computed for")
    if old is None and requested_fpir is None and identities < minimum_identities(AUTO_MAX_FPIR):
        return CalibrationOutcome(None, "none", f"not calibrated: {identities} identities are too few (FPIR "
                                  f"{wanted:g} needs {minimum_identities(wanted)}, and below "
                                  f"{minimum_identities(AUTO_MAX_FPIR)} no rate is calibrated automatically); queries "
                                  "use the model card's threshold - give --threshold, or run `facesearch calibrate "
                                  "--strangers DIR` with photos of people who are not enrolled")
    return None


def calibrate_on_commit(view, previous: dict | None, *, requested_fpir: float | None = None,
                        force: bool = False) -> CalibrationOutcome:
    """The calibration generation g stores, computed on `view`, a read view of g before it is current.

    Args:
        view: an open `GalleryIndex` of the generation being committed.
        previous: the calibration the previous generation stored (None: none).
        requested_fpir: the target asked for (`build-index --fpir`, `calibrate --fpir`); None keeps
            the previous one's (else the default, 1%).
        force: compute again even within x1.25 (`facesearch calibrate`).
    """
    start = time.perf_counter()
    m = view.manifest
    if (done := settled(previous, m.identities, m.faces, requested_fpir=requested_fpir, force=force)) is not None:
        return done
    old, note = _read(previous)
    previous = previous if old is not None else None
    if old is not None and old.method == METHOD_STRANGERS:
        note += (f"; it replaces the measurement on stranger photos made at {old.gallery_identities} identities "
                 "(run `facesearch calibrate --strangers DIR` again to measure anew)")
    rule = Rule(old.rule, old.fusion, old.margin_weight) if old is not None else Rule()
    try:
        return _compute(view, _target(old, requested_fpir), rule, explicit=requested_fpir is not None, start=start,
                        note=note)
    except GalleryTooSmallError as e:
        action = "refused" if requested_fpir is not None else "none"
        if old is not None and not old.needs_recalibration(m.identities, m.faces):
            return CalibrationOutcome(previous, action, f"{e}; the previous calibration is kept",
                                      time.perf_counter() - start)
        return CalibrationOutcome(None, action, f"{e}; queries use the model card's threshold",
                                  time.perf_counter() - start)
    except Exception as e:  # noqa: BLE001 - a failed estimate must not lose the user's write
        return CalibrationOutcome(previous, "failed", f"calibration failed ({type(e).__name__}: {e}); "
                                  + ("the previous calibration is kept" if previous else "the index stays uncalibrated")
                                  + " - run `facesearch calibrate`", time.perf_counter() - start)


def calibrate_lowered(gallery, wanted: float, rule: Rule = Rule(), *, explicit: bool = False,
                      faces: IdentityFaces | None = None) -> tuple[Calibration, str]:
    """Self-calibrate at `wanted`; unless `explicit`, a gallery too small for it is calibrated at the lowest
    rate it supports (up to `AUTO_MAX_FPIR`). Returns the calibration and a note saying so ("" at `wanted`).

    Raises:
        GalleryTooSmallError: `explicit` and too few identities, or fewer than `AUTO_MAX_FPIR` needs.
    """
    available = min(len(searchable_identities(gallery)), MAX_SAMPLED_IDENTITIES)
    target = wanted
    try:
        check_calibratable(available, wanted)
    except GalleryTooSmallError as e:
        target = lowest_supported_fpir(available)
        if explicit or target > AUTO_MAX_FPIR:
            if explicit:
                raise
            raise GalleryTooSmallError(f"{e}. Below {minimum_identities(AUTO_MAX_FPIR)} identities no rate is "
                                       "calibrated automatically") from e
    c = calibrate_index(gallery, target, rule=rule, faces=faces)
    if target == wanted:
        return c, ""
    return replace(c, requested_fpir=wanted), (f" (the lowest rate its {available} identities support; FPIR "
                                               f"{wanted:g} needs {minimum_identities(wanted)})")


def _compute(view, wanted: float, rule: Rule, *, explicit: bool, start: float, note: str) -> CalibrationOutcome:
    c, lowered = calibrate_lowered(view, wanted, rule, explicit=explicit)
    return CalibrationOutcome(c.to_dict(), "calibrated", f"calibrated: {c.describe()}{lowered}{note}",
                              time.perf_counter() - start)
