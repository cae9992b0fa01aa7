"""Identification figures of an embedder: probes searched against a temporary index of a gallery.

A probe's identity comes from its folder (as in `build-index`); probes whose identity has no
folder in the gallery are impostors. Probes that give no face vector are left out (listed).

Besides the best-score figures (rank-k, DIR at false alarm rates), the probes are answered as
`query` answers them: with the decision the index calibrated for itself when it was built
(`facesearch.index.openset.open_set`), so the report says what FPIR and FNIR that stored threshold really gives on the
impostors, where it sits on the FPIR/FNIR curve, and what the best threshold would have given.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from facesearch.embedder.core.constants import DEFAULT_BATCH_SIZE
from facesearch.embedder.core.errors import DatasetError
from facesearch.embedder.evaluation.identification import RANKS, decision_curve, decision_point, identification_report
from facesearch.embedder.evaluation.metrics import threshold_at_far
from facesearch.embedder.pipeline import embed_largest_faces
from facesearch.index.openset.calibration import DEFAULT_TARGET_FPIR, GalleryTooSmallError, resolve_decision
from facesearch.index.openset.decision import FUSIONS, RULES, Decision
from facesearch.index.openset.open_set import Rule, calibrate_lowered
from facesearch.index.openset.ranking import IdentityFaces, rank_batch, rank_identities
from facesearch.index.protocols import EmbedderLike
from facesearch.index.storage.gallery import GalleryIndex
from facesearch.index.sync.build import build_index
from facesearch.index.sync.scan import scan_folder


def evaluate_identification(gallery: Path, probes: Path, embedder: EmbedderLike, *,
                            batch_size: int = DEFAULT_BATCH_SIZE,
                            progress: Callable[[str, int, int], None] | None = None,
                            fpir: float | None = None, compare_rules: bool = False) -> dict:
    """Rank-1/rank-5 and open-set figures of the probes (`facesearch eval identify --json`, less the CLI's fields).

    Args:
        fpir: the target FPIR the index self-calibrates for (None: 1%).
        compare_rules: also self-calibrate every rule x fusion on the same index and report each
            one's FPIR and DIR on the probes (a calibration per rule: seconds at 1,000s of identities).

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
        build = build_index(gallery, Path(tmp) / "index", embedder, batch_size=batch_size, progress=progress,
                            fpir=fpir)
        embedded = embed_largest_faces(paths, embedder, batch_size=batch_size, progress=progress,
                                       phase="embedding probes")
        ok = np.flatnonzero(embedded.ok)
        kept = [identities[i] for i in ok]
        if not enrolled & set(kept) or build.vectors == 0:
            raise DatasetError(f"nothing to measure: {build.vectors} gallery faces indexed, {len(kept)} of "
                               f"{len(paths)} probes embedded, {len(enrolled & set(kept))} of their identities "
                               "enrolled")
        ranked, scores = [], []
        with GalleryIndex.open(Path(tmp) / "index") as index:
            for i in ok:
                result = rank_identities(index, embedded.vectors[i], k=max(RANKS))
                ranked.append([m.identity for m in result.matches])
                scores.append([m.score for m in result.matches])
            vectors = np.ascontiguousarray(embedded.vectors[ok], np.float32)
            stored = resolve_decision(embedder.card, index.manifest.calibration, index.manifest.identities)
            faces = IdentityFaces(index)
            target = stored.fpir or (fpir if fpir is not None else DEFAULT_TARGET_FPIR)
            decided = decision_figures(index, vectors, kept, enrolled, stored, faces, target)
            rules = compare_decisions(index, vectors, kept, enrolled, fpir if fpir is not None else
                                      DEFAULT_TARGET_FPIR, faces) if compare_rules else None
    report = identification_report(kept, ranked, scores, enrolled, thresholds=(embedder.card.default_threshold,))
    return {"gallery": str(gallery), "probes": str(probes), "gallery_identities": len(enrolled),
            "gallery_faces": build.vectors, "gallery_skipped": len(build.skipped) + build.no_face,
            "probe_photos": len(paths), "failures": [{"path": p, "reason": r} for p, r in embedded.failures],
            "card_threshold": embedder.card.default_threshold, "identification": report.to_dict(),
            "calibration": build.calibration, "decision": decided, "rules": rules}


def decision_figures(index: GalleryIndex, vectors: np.ndarray, identities: list[str], enrolled: set[str],
                     decision: Decision, faces: IdentityFaces, fpir_target: float) -> dict:
    """The probes answered with `decision`: FPIR, FNIR and DIR at its threshold, the oracle at `fpir_target`
    (the threshold chosen on the impostors themselves) and the FPIR/FNIR curve."""
    results = []
    for lo in range(0, len(vectors), 512):
        results += rank_batch(index, vectors[lo:lo + 512], k=1, decision=decision, faces=faces)
    statistic = np.array([r.value if r.value is not None else -np.inf for r in results], np.float64)
    top = [r.best.identity if r.best is not None else None for r in results]
    known = np.array([x in enrolled for x in identities], bool)
    right = np.array([t == x for t, x in zip(top, identities)], bool)[known]
    impostor = statistic[~known]
    stored = decision_point(decision.threshold, statistic[known], right, impostor)
    out = {"decision": decision.to_dict(), "at_threshold": stored.to_dict(), "known_probes": int(known.sum()),
           "impostor_probes": int((~known).sum()), "oracle": None, "curve": []}
    if impostor.size:
        oracle = threshold_at_far(impostor, fpir_target, statistic[known])
        out["oracle"] = decision_point(oracle, statistic[known], right, impostor, fpir_target).to_dict()
        out["curve"] = [p.to_dict() for p in decision_curve(statistic[known], right, impostor)]
    return out


def compare_decisions(index: GalleryIndex, vectors: np.ndarray, identities: list[str], enrolled: set[str],
                      fpir_target: float, faces: IdentityFaces) -> list[dict]:
    """Every rule x fusion self-calibrated on the index at `fpir_target`, then measured on the probes."""
    out = []
    for fusion in FUSIONS:
        for rule in RULES:
            try:
                c, lowered = calibrate_lowered(index, fpir_target, Rule(rule, fusion), faces=faces)
            except GalleryTooSmallError as e:
                out.append({"rule": rule, "fusion": fusion, "error": str(e)})
                continue
            figures = decision_figures(index, vectors, identities, enrolled, c.decision(), faces, c.target_fpir)
            out.append({"rule": rule, "fusion": fusion, "target_fpir": c.target_fpir, "threshold": c.threshold,
                        "calibration_seconds": c.seconds, "note": lowered.strip(" ()"),
                        "at_threshold": figures["at_threshold"], "oracle": figures["oracle"]})
    return out
