"""Identity ranking: identity scores from a face's neighbours, fused per identity, and a verdict.

A search finds the face's nearest stored faces; the identities among them are the candidates. Each
candidate's score is its best face's (fusion `best`), the mean of its two best faces (`top2`), or
the score of its template, the normalised mean of all its live faces (`template`, read through
`IdentityFaces`). A `Decision` (facesearch.index.openset.decision) turns the top two identity scores into the one
statistic that is compared with the threshold. Without one, a search answers as it always has: the
best face score against the model card's threshold.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from facesearch.embedder.core.model_card import ModelCard
from facesearch.index.openset.decision import Decision
from facesearch.index.storage.store import Box, FaceRecord

UNKNOWN = "unknown"  # the verdict when no identity reaches the threshold
OVERSAMPLE = 4  # neighbours searched per identity wanted, before widening
# An approximate index ranks the identities of its approximate neighbours: widening stops here
# (an exhaustive search over an approximate index would cost what the index exists to avoid).
APPROXIMATE_WIDEST = 4096
# Identities whose templates are scored (`top2`/`template` fusion): those among the face's nearest
# faces. On LFW (2 photos enrolled, 1,680 people) 10 candidates gave the same DIR and FPIR at a
# self-calibrated 1% as scoring every identity's template (within 0.001 and 0.0007).
TEMPLATE_CANDIDATES = 10


class SearchableGallery(Protocol):
    card: ModelCard
    exact: bool  # every vector is searched exhaustively (flat); else the neighbours are approximate

    def __len__(self) -> int: ...
    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def records(self, ids: Sequence[int]) -> list[FaceRecord]: ...
    def vectors(self, ids: Sequence[int]) -> np.ndarray: ...


@dataclass(frozen=True)
class IdentityMatch:
    """A candidate identity for a query: its score, and its best-scoring stored face among the neighbours."""

    identity: str
    score: float  # the identity's score under the search's fusion (best face, top-2 mean, template)
    path: str  # the best-matching photo, relative to the gallery folder
    box: Box | None  # the face in that photo; None for pre-aligned crops
    id: int  # the stored vector's id
    face_score: float | None = None  # that face's own score, when `score` is a fused one

    def to_dict(self) -> dict:
        d = {"identity": self.identity, "score": self.score, "path": self.path,
             "box": list(self.box) if self.box is not None else None, "id": self.id}
        return d if self.face_score is None else d | {"face_score": self.face_score}


@dataclass(frozen=True)
class QueryResult:
    """Top identities for one query face, best first, and whether the best is a match."""

    matches: tuple[IdentityMatch, ...]
    threshold: float
    searched: int  # stored vectors examined to rank the identities
    decision: Decision | None = None  # None: the best score against `threshold`
    statistic: float | None = None  # the decision's statistic (the best score under the `score` rule)
    runner_up: float | None = None  # the second identity's score, when the rule uses it

    @property
    def best(self) -> IdentityMatch | None:
        return self.matches[0] if self.matches else None

    @property
    def value(self) -> float | None:
        """The number compared with the threshold."""
        if self.statistic is not None:
            return self.statistic
        return self.best.score if self.best is not None else None

    @property
    def identity(self) -> str | None:
        """The top identity if the statistic reaches the threshold, else None."""
        best = self.best
        return best.identity if best is not None and self.value >= self.threshold else None

    @property
    def verdict(self) -> str:
        """The matched identity, or `"unknown"`."""
        return UNKNOWN if self.identity is None else self.identity

    def to_dict(self) -> dict:
        d = {"verdict": self.verdict, "known": self.identity is not None, "identity": self.identity,
             "threshold": self.threshold, "matches": [m.to_dict() for m in self.matches]}
        if self.decision is not None:  # where the threshold came from is the answer's, not the face's
            d["decision"] = {k: v for k, v in self.decision.to_dict().items() if k != "threshold_source"} | {
                "statistic": self.value, "runner_up_score": self.runner_up}
        return d


class FaceIdentities:
    """Every live face's identity, in arrays: face ids ascending, an identity code per face, the names.

    About 20 bytes a face plus one string per identity, where a dict of face id -> name and one
    id array per identity cost over 200 (2.5 GB at 10M faces, during calibration). Looked up as
    `table[face_id]` (binary search) and `table.ids_of(name)`.
    """

    def __init__(self, rows: Iterable[tuple[int, str]], chunk: int = 1 << 16):
        code_of: dict[str, int] = {}
        ids, codes = [np.empty(0, np.int64)], [np.empty(0, np.int32)]
        rows = iter(rows)
        while block := list(itertools.islice(rows, chunk)):
            ids.append(np.fromiter((r[0] for r in block), np.int64, len(block)))
            codes.append(np.fromiter((code_of.setdefault(r[1], len(code_of)) for r in block), np.int32, len(block)))
        self.ids, self.codes = np.concatenate(ids), np.concatenate(codes)
        if len(self.ids) > 1 and not np.all(self.ids[1:] > self.ids[:-1]):
            order = np.argsort(self.ids, kind="stable")
            self.ids, self.codes = self.ids[order], self.codes[order]
        self.names = list(code_of)
        self._code_of = code_of
        by_identity = np.argsort(self.codes, kind="stable")  # ids stay ascending within an identity
        self._grouped = self.ids[by_identity]
        self._starts = np.searchsorted(self.codes[by_identity], np.arange(len(self.names) + 1))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, face: int) -> str:
        at = int(np.searchsorted(self.ids, face))
        if at == len(self.ids) or self.ids[at] != face:
            raise KeyError(face)
        return self.names[self.codes[at]]

    def names_of(self, faces: np.ndarray) -> list[list[str | None]]:
        """The identity of each face id in a 2-d array, in one pass (None for the padding id -1).

        Raises:
            KeyError: an id that is not a live face of the table.
        """
        faces = np.asarray(faces, np.int64)
        if len(self.ids) == 0:
            codes = np.full(faces.shape, -1, np.int64)
        else:
            at = np.minimum(np.searchsorted(self.ids, faces), len(self.ids) - 1)
            codes = np.where(self.ids[at] == faces, self.codes[at], -1)
        unknown = (faces >= 0) & (codes < 0)
        if unknown.any():
            raise KeyError(int(faces[unknown][0]))
        names = self.names
        return [[names[c] if c >= 0 else None for c in row] for row in codes.tolist()]

    def ids_of(self, identity: str) -> np.ndarray:
        """The live face ids of `identity`, ascending (KeyError for a name without live faces)."""
        code = self._code_of[identity]
        return self._grouped[self._starts[code]:self._starts[code + 1]]


class IdentityFaces:
    """The live face vectors of identities in one open gallery, and their templates, kept as they are read.

    A gallery is a snapshot, so what is read stays true while it is open; at most `capacity`
    identities are kept (least recently used go first). `fill` reads many identities in one pass
    over the vectors; `preload` reads every face's identity once, for runs that will touch most
    identities (calibration on a large gallery), instead of one metadata query per identity.
    """

    def __init__(self, gallery, capacity: int = 50_000):
        self.gallery = gallery
        self.capacity = capacity
        self._kept: OrderedDict[str, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.identity_of: FaceIdentities | None = None  # every live face's identity, once `preload` ran

    def preload(self) -> None:
        """Read the (id, identity) of every live face now (one metadata scan)."""
        self.identity_of = FaceIdentities(self.gallery.store.face_identities())

    def ids_of(self, identity: str) -> np.ndarray:
        """The live face ids of `identity`, ascending."""
        if self.identity_of is not None:
            return self.identity_of.ids_of(identity)
        return np.asarray(self.gallery.store.ids_of_identity(identity), np.int64)

    def fill(self, identities) -> None:
        """Read the identities not kept yet, their vectors in one `gallery.vectors` call."""
        missing = [x for x in dict.fromkeys(identities) if x not in self._kept]
        if not missing:
            return
        groups = [self.ids_of(x) for x in missing]
        vectors = self.gallery.vectors(np.concatenate(groups))
        bounds = np.cumsum([len(g) for g in groups])[:-1]
        for name, v in zip(missing, np.split(vectors, bounds)):
            total = v.astype(np.float64).sum(axis=0)
            self._kept[name] = (v, (total / max(float(np.linalg.norm(total)), 1e-12)).astype(np.float32))
        while len(self._kept) > self.capacity:
            self._kept.popitem(last=False)

    def get(self, identity: str) -> tuple[np.ndarray, np.ndarray]:
        """`(vectors (n, d) float32, template (d,) float32 L2-normalised)` of `identity`'s live faces."""
        if identity not in self._kept:
            self.fill([identity])
        self._kept.move_to_end(identity)
        return self._kept[identity]

    def scores(self, vector: np.ndarray, identities: Sequence[str], fusion: str) -> np.ndarray:
        """`(len(identities),)` float64 fused scores of one query `(d,)` against each identity."""
        self.fill(identities)
        if fusion == "template":
            return np.stack([self._kept[x][1] for x in identities]).astype(np.float64) @ vector
        out = np.empty(len(identities), np.float64)
        for j, identity in enumerate(identities):  # top2
            s = np.sort(self.get(identity)[0].astype(np.float64) @ vector)[::-1]
            out[j] = float(s[:2].mean())
        return out


def rank_identities(gallery: SearchableGallery, vector: np.ndarray, k: int = 5,
                    threshold: float | None = None, oversample: int = OVERSAMPLE, *,
                    decision: Decision | None = None, faces: IdentityFaces | None = None,
                    exclude: str | None = None) -> QueryResult:
    """Rank identities for one query face and decide its verdict.

    Searches `k * oversample` neighbours and widens (x4) until enough distinct identities are seen
    or the whole index is covered. Once an identity is seen among the top neighbours, no unseen
    identity's best face can beat it, so on an exact (flat) index the `best` ranking is exact (up
    to ties). On an approximate index it ranks the identities of the approximate neighbours,
    widening to at most `APPROXIMATE_WIDEST` of them.

    Args:
        gallery: an open `GalleryIndex` (or anything with `card`, `search`, `records`, `len`).
        vector: `(d,)` or `(1, d)` float32, L2-normalised.
        k: identities to return; fewer if the gallery has fewer.
        threshold: with no `decision`, the minimum best score for a match; defaults to the model
            card's `default_threshold`.
        oversample: neighbours searched per identity wanted, before widening.
        decision: the rule, fusion and threshold (overrides `threshold`); see `facesearch.index.openset.decision`.
        faces: a cache of identities' vectors for `top2`/`template` fusion (one per open gallery).
        exclude: an identity left out of the ranking (leave-one-identity-out calibration).

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
    if decision is None:
        threshold = gallery.card.default_threshold if threshold is None else float(threshold)
        decision = Decision(threshold)
        legacy = True
    else:
        legacy = False
    result = rank_batch(gallery, v[None, :], k=k, decision=decision, faces=faces, oversample=oversample,
                        exclude=None if exclude is None else [exclude])[0]
    if legacy:  # as before decisions existed: no "decision" entry, the best score is the statistic
        return QueryResult(result.matches, result.threshold, result.searched)
    return result


def rank_batch(gallery: SearchableGallery, vectors: np.ndarray, *, k: int = 5, decision: Decision,
               faces: IdentityFaces | None = None, oversample: int = OVERSAMPLE,
               exclude: Sequence[str | None] | None = None) -> list[QueryResult]:
    """`rank_identities` for each row of `vectors` `(m, d)` float32, searched together.

    Returns:
        One `QueryResult` per row, in order.
    """
    if k < 1 or oversample < 1:
        raise ValueError(f"k and oversample must be at least 1, got k={k}, oversample={oversample}")
    q = np.ascontiguousarray(vectors, dtype=np.float32)
    if q.ndim != 2:
        raise ValueError(f"rank_batch takes vectors of shape (m, d), got shape {q.shape}")
    fused = decision.fusion != "best"
    if fused and faces is None:
        faces = IdentityFaces(gallery)
    wanted = max(k, 2 if decision.needs_runner_up else 1, TEMPLATE_CANDIDATES if fused else 1)
    n = len(gallery) if getattr(gallery, "exact", True) else min(len(gallery), max(APPROXIMATE_WIDEST, wanted))
    if n == 0:  # every face removed (e.g. through the service): nobody to match
        return [QueryResult((), decision.threshold, 0, decision, None, None) for _ in range(len(q))]
    known: dict[int, FaceRecord] = {}
    lookup = faces.identity_of if faces is not None and faces.identity_of is not None else None
    candidates, searched = _neighbour_identities(gallery, q, wanted, n, oversample, exclude, known, lookup)
    if fused:
        faces.fill(name for found in candidates for name in found)
    ranked = []
    for row, found in enumerate(candidates):
        names = list(found)
        face_scores = np.array([found[name][0] for name in names], np.float64)
        scores = faces.scores(q[row].astype(np.float64), names, decision.fusion) if fused else face_scores
        ranked.append((names, face_scores, scores, np.argsort(-scores, kind="stable")))
    wanted_ids = {candidates[row][names[j]][1] for row, (names, _, _, order) in enumerate(ranked) for j in order[:k]}
    known.update((r.id, r) for r in gallery.records(sorted(wanted_ids - known.keys())))
    out = []
    for row, (names, face_scores, scores, order) in enumerate(ranked):
        found = candidates[row]
        matches = tuple(IdentityMatch(names[j], float(scores[j]), known[found[names[j]][1]].path,
                                      known[found[names[j]][1]].box, found[names[j]][1],
                                      float(face_scores[j]) if fused else None) for j in order[:k])
        best = float(scores[order[0]]) if len(order) else None
        runner_up = float(scores[order[1]]) if len(order) > 1 else None
        statistic = decision.statistic(best, runner_up) if best is not None else None
        out.append(QueryResult(matches, decision.threshold, searched[row], decision, statistic,
                               runner_up if decision.needs_runner_up else None))
    return out


def _neighbour_identities(gallery: SearchableGallery, q: np.ndarray, wanted: int, n: int, oversample: int,
                          exclude: Sequence[str | None] | None, known: dict[int, FaceRecord],
                          lookup: FaceIdentities | None) -> tuple[list[dict], list[int]]:
    """Per query, up to `wanted` identities in order of their best neighbour: identity -> (score, face id).

    Rows short of `wanted` identities are searched again with 4x the neighbours, until the whole
    searchable range `n` is covered. A face's identity comes from `lookup` (every live face's,
    read once) or else from its record, which is kept in `known`.
    """
    m = len(q)
    found: list[dict] = [{} for _ in range(m)]
    searched = [0] * m
    pending = np.arange(m)
    want = min(n, wanted * oversample)
    identity_of: dict[int, str] = {}
    while len(pending):
        scores, ids = gallery.search(q[pending], want)
        if lookup is None:
            fresh = {int(i) for i in np.unique(ids) if i >= 0 and int(i) not in known}  # -1: a short result's padding
            for r in gallery.records(sorted(fresh)):
                known[r.id] = r
                identity_of[r.id] = r.identity
        names = lookup.names_of(ids) if lookup is not None else None
        short = []
        for row, i in enumerate(pending):
            skip = exclude[i] if exclude is not None else None
            best: dict[str, tuple[float, int]] = {}
            for j, (score, face) in enumerate(zip(scores[row].tolist(), ids[row].tolist())):
                if face < 0:
                    break
                identity = names[row][j] if names is not None else identity_of[face]
                if identity != skip and identity not in best:
                    best[identity] = (float(score), face)
                    if len(best) == wanted:
                        break
            found[i], searched[i] = best, want
            if len(best) < wanted and want < n:
                short.append(i)
        pending = np.array(short, dtype=np.int64)
        want = min(n, want * 4)
    return found, searched
