"""`facesearch calibrate`: a new open-set estimate for an index, from its gallery or from stranger photos.

The estimate is computed on a snapshot of the committed generation without the index's write lock
(writes go on meanwhile), then stored by a short commit of its own (`IndexWriter.request_calibration`),
so readers see the old threshold or the new one, never a mixture; if the gallery moved meanwhile beyond
what an estimate is kept for (x1.25), it is computed again on the newer snapshot. A refusal writes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from facesearch.embedder.core.constants import DEFAULT_BATCH_SIZE
from facesearch.embedder.core.errors import DatasetError
from facesearch.embedder.pipeline import embed_largest_faces
from facesearch.index.openset.calibration import DEFAULT_TARGET_FPIR, Calibration, CalibrationError
from facesearch.index.openset.commit import COMMIT_CALIBRATION
from facesearch.index.openset.open_set import (
    Rule,
    calibrate_index,
    calibrate_with_strangers,
    searchable_identities,
    settled,
)
from facesearch.index.protocols import EmbedderLike
from facesearch.index.storage.gallery import GalleryIndex
from facesearch.index.storage.manifest import read_manifest
from facesearch.index.storage.merging import SWAP_WAIT
from facesearch.index.storage.writer import IndexWriter
from facesearch.index.sync.scan import scan_folder

ATTEMPTS = 3  # snapshots an estimate is computed on before it is stored whatever moved meanwhile


def recalibrate(index_dir: str | os.PathLike, *, fpir: float | None = None, strangers: str | os.PathLike | None = None,
                embedder: EmbedderLike | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Compute the index's calibration again and store it (a new generation).

    Args:
        index_dir: the index.
        fpir: the target FPIR (None: the stored calibration's, else 1%).
        strangers: a folder of photos of people who are not enrolled (`DIR/<person>/*.jpg`, or
            photos directly in it, one person each): a direct measurement replaces the estimate.
        embedder: the index's model, to embed `strangers` (needed with them only).
        batch_size: photos per model call.
        progress: `progress(phase, done, total)`.

    Returns:
        `{"index", "generation", "calibration" (the stored record), "message", "strangers"}`.

    Raises:
        GalleryTooSmallError: too few identities (or stranger people) for `fpir`; says the minimum
            and what to do. Nothing is written.
        DatasetError: `strangers` holds no usable photo.
        IndexFormatError, IndexMismatchError: as opening the index for writing.
    """
    index_dir = Path(index_dir).expanduser().resolve()
    manifest = read_manifest(index_dir)
    strangers_seen = None  # (vectors, people, report): embedded once, searched against each snapshot
    for attempt in range(1, ATTEMPTS + 1):
        with GalleryIndex.open(index_dir) as gallery:  # a snapshot: writers go on beside it
            based = gallery.manifest
            previous = based.calibration
            target = fpir if fpir is not None else _stored_target(previous)
            rule = _stored_rule(previous)
            if strangers is None:
                calibration = calibrate_index(gallery, target, rule=rule)
            else:
                if embedder is None:
                    raise ValueError("calibrating on stranger photos needs the index's embedder")
                if strangers_seen is None:
                    strangers_seen = _embed_strangers(Path(strangers), gallery, embedder, batch_size, progress)
                vectors, people, report = strangers_seen
                calibration = calibrate_with_strangers(gallery, vectors, people, target, rule=rule)
        with IndexWriter.open(index_dir, calibrator=COMMIT_CALIBRATION, card=manifest.model_card,
                              model_dir=manifest.model_dir, wait=SWAP_WAIT) as writer:  # a short commit
            if attempt < ATTEMPTS and _moved(calibration.to_dict(), based, writer.manifest, target):
                continue  # the gallery moved beyond x1.25 while computing: again, on the newer snapshot
            writer.request_calibration(target, calibration=calibration.to_dict())
            result = writer.commit(merge=False)
        return {"index": str(index_dir), "generation": result.generation, "calibration": calibration.to_dict(),
                "message": calibration.describe(), "strangers": strangers_seen[2] if strangers_seen else None}
    raise AssertionError("unreachable: the last attempt is always stored")


def _moved(calibration: dict, based, now, target: float) -> bool:
    """Whether the gallery moved from `based` to `now` beyond what `calibration` is kept for (x1.25)."""
    if now.generation == based.generation:
        return False
    kept = settled(calibration, now.identities, now.faces, requested_fpir=target)
    return kept is None or kept.action != "kept"


def _stored_target(previous: dict | None) -> float:
    if previous is None:
        return DEFAULT_TARGET_FPIR
    try:
        old = Calibration.from_dict(previous)
    except CalibrationError:
        return DEFAULT_TARGET_FPIR
    return old.stored_fpir


def _stored_rule(previous: dict | None) -> Rule:
    try:
        old = Calibration.from_dict(previous) if previous is not None else None
    except CalibrationError:
        old = None
    return Rule(old.rule, old.fusion, old.margin_weight) if old is not None else Rule()


def _embed_strangers(folder: Path, gallery: GalleryIndex, embedder: EmbedderLike, batch_size: int,
                     progress: Callable[[str, int, int], None] | None) -> tuple[np.ndarray, list[str], dict]:
    """The largest face of each stranger photo; photos of enrolled identities are left out (and listed)."""
    scan = scan_folder(folder)
    enrolled = set(searchable_identities(gallery))
    kept = [f for f in scan.files if f.identity not in enrolled]
    left_out = sorted({f.identity for f in scan.files if f.identity in enrolled})
    if not kept:
        raise DatasetError(f"no photo in '{folder}' is of someone not enrolled ({len(scan.files)} photos, "
                           f"{len(left_out)} enrolled people): give photos of people the gallery does not hold")
    embedded = embed_largest_faces([scan.root / f.path for f in kept], embedder, batch_size=batch_size,
                                   progress=progress, phase="embedding strangers")
    ok = np.flatnonzero(embedded.ok)
    if not len(ok):
        raise DatasetError(f"none of the {len(kept)} stranger photos in '{folder}' gave a face vector")
    people = [kept[i].identity for i in ok]
    report = {"folder": str(scan.root), "photos": len(kept), "embedded": int(len(ok)), "people": len(set(people)),
              "enrolled_left_out": left_out, "failures": [{"path": p, "reason": r} for p, r in embedded.failures]}
    return np.ascontiguousarray(embedded.vectors[ok], np.float32), people, report
