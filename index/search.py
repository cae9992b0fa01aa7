"""Identity ranking: the best score per identity among a face's neighbours, and a verdict."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from embedder.core.model_card import ModelCard
from index.store import Box, FaceRecord

UNKNOWN = "unknown"  # the verdict when no identity reaches the threshold
OVERSAMPLE = 4  # neighbours searched per identity wanted, before widening
# An approximate index ranks the identities of its approximate neighbours: widening stops here
# (an exhaustive search over an approximate index would cost what the index exists to avoid).
APPROXIMATE_WIDEST = 4096


class SearchableGallery(Protocol):
    card: ModelCard
    exact: bool  # every vector is searched exhaustively (flat); else the neighbours are approximate

    def __len__(self) -> int: ...
    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def records(self, ids: Sequence[int]) -> list[FaceRecord]: ...


@dataclass(frozen=True)
class IdentityMatch:
    """An identity's best-scoring stored face for a query."""

    identity: str
    score: float  # inner product of L2-normalised vectors, in [-1, 1]
    path: str  # the best-matching photo, relative to the gallery folder
    box: Box | None  # the face in that photo; None for pre-aligned crops
    id: int  # the stored vector's id

    def to_dict(self) -> dict:
        return {"identity": self.identity, "score": self.score, "path": self.path,
                "box": list(self.box) if self.box is not None else None, "id": self.id}


@dataclass(frozen=True)
class QueryResult:
    """Top identities for one query face, best first, and whether the best is a match."""

    matches: tuple[IdentityMatch, ...]
    threshold: float
    searched: int  # stored vectors examined to rank the identities

    @property
    def best(self) -> IdentityMatch | None:
        return self.matches[0] if self.matches else None

    @property
    def identity(self) -> str | None:
        """The top identity if its score reaches the threshold, else None."""
        best = self.best
        return best.identity if best is not None and best.score >= self.threshold else None

    @property
    def verdict(self) -> str:
        """The matched identity, or `"unknown"`."""
        return UNKNOWN if self.identity is None else self.identity

    def to_dict(self) -> dict:
        return {"verdict": self.verdict, "known": self.identity is not None, "identity": self.identity,
                "threshold": self.threshold, "matches": [m.to_dict() for m in self.matches]}


def rank_identities(gallery: SearchableGallery, vector: np.ndarray, k: int = 5,
                    threshold: float | None = None, oversample: int = OVERSAMPLE) -> QueryResult:
    """Rank identities by their best score against one query face.

    Searches `k * oversample` neighbours and widens (x4) until `k` distinct identities are seen
    or the whole index is covered. Once `k` identities are seen among the top neighbours, no
    unseen identity can beat them, so on an exact (flat) index the ranking is exact (up to ties).
    On an approximate index it ranks the identities of the approximate neighbours, widening to
    at most `APPROXIMATE_WIDEST` of them.

    Args:
        gallery: an open `GalleryIndex` (or anything with `card`, `search`, `records`, `len`).
        vector: `(d,)` or `(1, d)` float32, L2-normalised.
        k: identities to return; fewer if the gallery has fewer.
        threshold: minimum score for a match; defaults to the model card's `default_threshold`.

    Returns:
        A `QueryResult` with up to `k` matches, best first.

    Raises:
        ValueError: `vector` is not one vector, or `k` / `oversample` is below 1.
    """
    v = np.asarray(vector)
    if v.ndim == 2 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 1:
        raise ValueError(f"rank_identities takes one vector of shape (d,), got shape {v.shape}")
    if k < 1 or oversample < 1:
        raise ValueError(f"k and oversample must be at least 1, got k={k}, oversample={oversample}")
    threshold = gallery.card.default_threshold if threshold is None else float(threshold)
    n = len(gallery) if getattr(gallery, "exact", True) else min(len(gallery), max(APPROXIMATE_WIDEST, k))
    want = min(n, k * oversample)
    known: dict[int, FaceRecord] = {}
    while True:
        scores, ids = gallery.search(v[None, :], want)
        fresh = [int(i) for i in ids[0] if i >= 0 and int(i) not in known]  # -1: padding of a short result
        known.update((r.id, r) for r in gallery.records(fresh))
        best: dict[str, IdentityMatch] = {}
        for score, i in zip(scores[0].tolist(), ids[0].tolist()):
            if i < 0:
                break
            r = known[i]
            if r.identity not in best:
                best[r.identity] = IdentityMatch(r.identity, float(score), r.path, r.box, r.id)
                if len(best) == k:
                    break
        if len(best) == k or want >= n:
            return QueryResult(tuple(best.values()), threshold, want)
        want = min(n, want * 4)
