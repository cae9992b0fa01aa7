"""The open-set calibration a writer runs at each commit, handed to it as a hook.

The writer (storage) knows nothing of calibration: it calls `COMMIT_CALIBRATION` when it was opened
with it (`facesearch.index.open_writer` does; so do the builds), giving a read view of the generation
being committed. The rules (when to compute again, what a stored estimate is for) are
`facesearch.index.openset.open_set`'s.
"""

from __future__ import annotations

from collections.abc import Callable

from facesearch.index.openset.open_set import CalibrationOutcome, calibrate_on_commit, settled, target_differs


class CommitCalibration:
    """The hook `IndexWriter` calls: whether a requested rate calls for a commit, and what a commit stores."""

    def wants(self, previous: dict | None, fpir: float | None) -> bool:
        """Whether asking for `fpir` needs a commit even with nothing else staged."""
        return target_differs(previous, fpir)

    def at_commit(self, manifest, open_view: Callable[[], object], *, requested_fpir: float | None, force: bool,
                  given: dict | None) -> tuple[dict | None, dict]:
        """(the calibration the generation stores, what was done) for `manifest`, the generation committed.

        `open_view()` opens a read view (a `GalleryIndex`) of that generation; it is called only when
        the counts alone do not settle it. A failure keeps the previous estimate: the write never fails for it.
        """
        if given is not None:
            outcome = CalibrationOutcome(given, "stored", "stored as measured")
        elif (outcome := settled(manifest.calibration, manifest.identities, manifest.faces,
                                 requested_fpir=requested_fpir, force=force)) is None:
            try:
                with open_view() as view:
                    outcome = calibrate_on_commit(view, manifest.calibration, requested_fpir=requested_fpir,
                                                  force=force)
            except Exception as e:  # noqa: BLE001 - reading the pending generation failed: keep the write
                outcome = CalibrationOutcome(manifest.calibration, "failed", f"calibration failed ({type(e).__name__}: "
                                             f"{e}); the previous estimate is kept - run `facesearch calibrate`")
        return outcome.calibration, outcome.to_dict()


COMMIT_CALIBRATION = CommitCalibration()
