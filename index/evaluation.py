"""Identification figures of an embedder: probes searched against a temporary index of a gallery.

A probe's identity comes from its folder (as in `build-index`); probes whose identity has no
folder in the gallery are impostors. Probes that give no face vector are left out (listed).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from embedder.core.constants import DEFAULT_BATCH_SIZE
from embedder.core.errors import DatasetError
from embedder.evaluation.identification import RANKS, identification_report
from embedder.pipeline import embed_largest_faces
from index.build import build_index
from index.gallery import GalleryIndex
from index.protocols import EmbedderLike
from index.scan import scan_folder


def evaluate_identification(gallery: Path, probes: Path, embedder: EmbedderLike, *,
                            batch_size: int = DEFAULT_BATCH_SIZE,
                            progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Rank-1/rank-5 and open-set figures of the probes (`facesearch eval identify --json`, less the CLI's fields).

    Raises:
        DatasetError: no probe identity is enrolled, or nothing could be measured.
    """
    enrolled = {f.identity for f in scan_folder(gallery).files}
    probe_files = scan_folder(probes)
    paths = [probe_files.root / f.path for f in probe_files.files]
    identities = [f.identity for f in probe_files.files]
    if not enrolled & set(identities):
        raise DatasetError(f"none of the {len(set(identities))} probe identities in '{probes}' has a folder in "
                           f"the gallery '{gallery}': name probe folders after gallery identities")
    with tempfile.TemporaryDirectory(prefix="facesearch-eval-") as tmp:
        build = build_index(gallery, Path(tmp) / "index", embedder, batch_size=batch_size, progress=progress)
        embedded = embed_largest_faces(paths, embedder, batch_size=batch_size, progress=progress,
                                       phase="embedding probes")
        ranked, scores = [], []
        with GalleryIndex.open(Path(tmp) / "index") as index:
            for i in np.flatnonzero(embedded.ok):
                result = index.rank_identities(embedded.vectors[i], k=max(RANKS))
                ranked.append([m.identity for m in result.matches])
                scores.append([m.score for m in result.matches])
    kept = [identities[i] for i in np.flatnonzero(embedded.ok)]
    if not enrolled & set(kept) or build.vectors == 0:
        raise DatasetError(f"nothing to measure: {build.vectors} gallery faces indexed, {len(kept)} of {len(paths)} "
                           f"probes embedded, {len(enrolled & set(kept))} of their identities enrolled")
    report = identification_report(kept, ranked, scores, enrolled, thresholds=(embedder.card.default_threshold,))
    return {"gallery": str(gallery), "probes": str(probes), "gallery_identities": len(enrolled),
            "gallery_faces": build.vectors, "gallery_skipped": len(build.skipped) + build.no_face,
            "probe_photos": len(paths), "failures": [{"path": p, "reason": r} for p, r in embedded.failures],
            "card_threshold": embedder.card.default_threshold, "identification": report.to_dict()}
