"""The open-set calibration a writer runs at each commit, handed to it as a hook.

The writer (storage) knows nothing of calibration: it calls `COMMIT_CALIBRATION` when it was opened
with it (`facesearch.index.open_writer` does; so do the builds), giving a read view of the generation
being committed. The rules (when to compute again, what a stored estimate is for) are
`facesearch.index.openset.open_set`'s.

A writer opened with `defer_calibration` (the service's) does not search while it holds the write
lock: a commit that needs a new estimate keeps the previous one ("deferred"), and
`calibrate_beside_writers` computes it from a snapshot, holding only the calibration lock, and
records it by a short commit of its own; if the gallery moved beyond the rule's x1.25 meanwhile,
it is computed again on the newer snapshot.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from facesearch.index.openset.open_set import CalibrationOutcome, calibrate_on_commit, settled, target_differs
from facesearch.index.storage.gallery import GalleryIndex
from facesearch.index.storage.generation import CALIBRATION_LOCK_FILE, maintenance_lock
from facesearch.index.storage.merging import SWAP_WAIT, short_commit

DEFERRED = "deferred"  # the action of a commit that left the computation to `calibrate_beside_writers`


class CommitCalibration:
    """The hook `IndexWriter` calls: whether a requested rate calls for a commit, and what a commit stores."""

    def wants(self, previous: dict | None, fpir: float | None) -> bool:
        """Whether asking for `fpir` needs a commit even with nothing else staged."""
        return target_differs(previous, fpir)

    def at_commit(self, manifest, open_view: Callable[[], object], *, requested_fpir: float | None, force: bool,
                  given: dict | None, defer: bool = False) -> tuple[dict | None, dict]:
        """(the calibration the generation stores, what was done) for `manifest`, the generation committed.

        `open_view()` opens a read view (a `GalleryIndex`) of that generation; it is called only when
        the counts alone do not settle it (unless `defer`: then the previous estimate is kept and the
        outcome says "deferred"). A failure keeps the previous estimate: the write never fails for it.
        """
        if given is not None:
            outcome = CalibrationOutcome(given, "stored", "stored as measured")
        elif (outcome := settled(manifest.calibration, manifest.identities, manifest.faces,
                                 requested_fpir=requested_fpir, force=force)) is None and defer:
            outcome = CalibrationOutcome(manifest.calibration, DEFERRED, "the gallery moved beyond what the stored "
                                         "estimate was computed for: it is computed again beside the writes")
        elif outcome is None:
            try:
                with open_view() as view:
                    outcome = calibrate_on_commit(view, manifest.calibration, requested_fpir=requested_fpir,
                                                  force=force)
            except Exception as e:  # noqa: BLE001 - reading the pending generation failed: keep the write
                outcome = CalibrationOutcome(manifest.calibration, "failed", f"calibration failed ({type(e).__name__}: "
                                             f"{e}); the previous estimate is kept - run `facesearch calibrate`")
        return outcome.calibration, outcome.to_dict()


COMMIT_CALIBRATION = CommitCalibration()


def calibrate_beside_writers(index_dir: str | os.PathLike, *, requested_fpir: float | None = None, force: bool = False,
                             wait: float = 0.0, lock_wait: float = SWAP_WAIT, attempts: int = 3) -> dict:
    """Compute the calibration the current generation calls for without the write lock, and record it.

    The estimate is computed on a snapshot (holding the calibration lock: one at a time, across
    processes) by the rule every commit follows (`calibrate_on_commit`), then recorded by a short
    commit under the write lock, with no row changed. If the gallery moved meanwhile beyond what the
    rule keeps (x1.25), it is computed again on the newer snapshot, up to `attempts` times (the last
    one is recorded whatever happened meanwhile: a later commit asks again). If another writer
    recorded a calibration meanwhile (a build, `facesearch calibrate`), that one stays.

    Returns:
        `CalibrationOutcome.to_dict()` plus "generation" (the one that recorded it, or None) and "attempts".

    Raises:
        IndexBusyError: another calibration runs (after `wait`), or the write lock stayed held (`lock_wait`).
    """
    index_dir = Path(index_dir).expanduser().resolve()
    start = time.perf_counter()
    with maintenance_lock(index_dir, CALIBRATION_LOCK_FILE, wait):
        for attempt in range(1, attempts + 1):
            with GalleryIndex.open(index_dir) as view:
                based = view.manifest
                outcome = calibrate_on_commit(view, based.calibration, requested_fpir=requested_fpir, force=force)
            if outcome.calibration == based.calibration:  # kept, too small, failed: nothing to record
                return outcome.to_dict() | {"generation": None, "attempts": attempt}
            verdict = {}

            def make(current, g, outcome=outcome, based=based, last=attempt == attempts, verdict=verdict):
                if current.calibration != based.calibration:  # another writer recorded one meanwhile
                    verdict["superseded"] = True
                    return None
                moved = False
                if current.generation != based.generation:
                    still = None if outcome.calibration is None else settled(
                        outcome.calibration, current.identities, current.faces, requested_fpir=requested_fpir)
                    moved = still is None or still.action != "kept"
                if moved and not last:
                    return None
                return replace(current, calibration=outcome.calibration)

            manifest = short_commit(index_dir, make, lock_wait=lock_wait)
            if manifest is not None:
                outcome.seconds = time.perf_counter() - start
                return outcome.to_dict() | {"generation": manifest.generation, "attempts": attempt}
            if verdict.get("superseded"):
                return CalibrationOutcome(None, "superseded", "another writer recorded a calibration meanwhile; "
                                          "it stays").to_dict() | {"generation": None, "attempts": attempt}
    raise AssertionError("unreachable: the last attempt is always recorded")
