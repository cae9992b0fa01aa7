"""Verdicts on faces already found, with an embedder already loaded: what the API and the service share.

This module loads no model and converts none (`facesearch.api.models` does), so the service, on the
run-time path, imports it without reaching the default model's conversion.
"""

from __future__ import annotations

from facesearch.api.results import Verification
from facesearch.embedder.core.boxes import box_tuple


def verify_faces(embedder, found, *, threshold: float | None = None) -> Verification:
    """`verify` for two photos' faces already found: `found` is [(name, crops), (name, crops)].

    The service calls this with its uploads' faces, so its verdict is the API's.
    """
    import numpy as np

    from facesearch.embedder.pipeline import select_faces
    from facesearch.index.openset.calibration import resolve_decision

    chosen = [crops[select_faces(crops, "largest")[0]] for _, crops in found]
    v = embedder.embed([c.image for c in chosen])
    score = float(np.dot(v[0], v[1]))
    decision = resolve_decision(embedder.card, None, 0, threshold=threshold)
    return Verification(score >= decision.threshold, score, decision.threshold, decision.source, embedder.card.name,
                        tuple(box_tuple(c.box) for c in chosen),
                        tuple(len(crops) for _, crops in found), tuple(name for name, _ in found))
