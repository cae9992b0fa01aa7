"""What the API answers: typed, frozen results whose `to_dict()` is exactly what the CLI's `--json` prints."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from facesearch.embedder.core.boxes import Box
from facesearch.embedder.core.boxes import box_list as _list
from facesearch.embedder.core.boxes import box_tuple as _box

if TYPE_CHECKING:
    import numpy as np


@dataclass(frozen=True)
class Match:
    """A candidate identity for a face: its score and its best-matching stored face."""

    identity: str
    score: float  # higher is more alike (inner product of L2-normalised vectors, fused per identity)
    path: str  # the stored photo, relative to the gallery folder (enrolled photos: .enrolled/...)
    box: Box | None  # that face in that photo; None for pre-aligned crops
    id: int  # the stored face's id (what `remove_face` takes)
    face_score: float | None = None  # that face's own score, when `score` is a fused one

    @classmethod
    def from_dict(cls, d: dict) -> Match:
        return cls(d["identity"], float(d["score"]), d["path"], _box(d["box"]), int(d["id"]), d.get("face_score"))

    def to_dict(self) -> dict:
        d = {"identity": self.identity, "score": self.score, "path": self.path, "box": _list(self.box), "id": self.id}
        return d if self.face_score is None else d | {"face_score": self.face_score}


@dataclass(frozen=True)
class Face:
    """One face found in a searched photo, and who it is.

    `identity` is None when the verdict is unknown (no identity scored above the threshold);
    `score` is the best match's score (None for an empty gallery).
    """

    box: Box | None
    identity: str | None
    score: float | None
    threshold: float
    verdict: str  # the identity, or "unknown"
    matches: tuple[Match, ...]
    decision: dict | None = None  # how the verdict was reached: rule, statistic, runner-up, calibration

    @property
    def known(self) -> bool:
        return self.identity is not None

    @classmethod
    def from_dict(cls, d: dict) -> Face:
        matches = tuple(Match.from_dict(m) for m in d["matches"])
        return cls(_box(d.get("box")), d["identity"], matches[0].score if matches else None, float(d["threshold"]),
                   d["verdict"], matches, d.get("decision"))

    def to_dict(self) -> dict:
        d = {"box": _list(self.box), "verdict": self.verdict, "known": self.known, "identity": self.identity,
             "threshold": self.threshold, "matches": [m.to_dict() for m in self.matches]}
        return d if self.decision is None else d | {"decision": self.decision}


@dataclass(frozen=True)
class SearchResult:
    """Every face of one photo with its identities; iterate it for the faces.

    Attributes:
        image: the photo's path, or "<bytes>" / "<array>" / "<PIL image>" for an in-memory one.
        threshold: the threshold the verdicts used; `threshold_source` says where it came from
            ("--threshold", "--fpir", "calibration", "model-card" or "default").
    """

    image: str
    index: str
    model: str
    threshold: float
    threshold_source: str
    faces: tuple[Face, ...]

    def __iter__(self) -> Iterator[Face]:
        return iter(self.faces)

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, i: int) -> Face:
        return self.faces[i]

    @classmethod
    def from_dict(cls, d: dict) -> SearchResult:
        return cls(d["image"], d["index"], d["model"], float(d["threshold"]), d["threshold_source"],
                   tuple(Face.from_dict(f) for f in d["faces"]))

    def to_dict(self) -> dict:
        """`facesearch query --json`."""
        return {"image": self.image, "index": self.index, "model": self.model, "threshold": self.threshold,
                "threshold_source": self.threshold_source, "faces": [f.to_dict() for f in self.faces]}


@dataclass(frozen=True)
class Verification:
    """Whether the largest faces of two photos are the same person (a 1:1 decision at the card's threshold)."""

    same: bool
    score: float
    threshold: float
    threshold_source: str  # "--threshold", "model-card" or "default"
    model: str
    boxes: tuple[Box | None, Box | None]
    faces_found: tuple[int, int]
    images: tuple[str, str]

    def to_dict(self) -> dict:
        """`facesearch verify --json`."""
        return {"same": self.same, "score": self.score, "threshold": self.threshold,
                "threshold_source": self.threshold_source, "model": self.model,
                "photos": [{"image": i, "box": _list(b), "faces_found": n}
                           for i, b, n in zip(self.images, self.boxes, self.faces_found)]}


@dataclass(frozen=True)
class DetectedFace:
    """A face the detector found: box, its score in [0, 1], 5 landmarks (eyes, nose tip, mouth corners)."""

    box: Box
    score: float
    landmarks: tuple[tuple[float, float], ...]

    def to_dict(self) -> dict:
        return {"box": list(self.box), "score": self.score, "landmarks": [list(p) for p in self.landmarks]}


@dataclass(frozen=True)
class EmbeddedFace:
    """A face and its vector: `(d,)` float32, L2-normalised, from the model named."""

    image: str
    face: int  # its place among the photo's faces, highest detector score first (as search lists them)
    box: Box | None
    detector_score: float | None
    vector: np.ndarray
    model: str

    def to_dict(self) -> dict:
        return {"image": self.image, "face": self.face, "box": _list(self.box), "detector_score": self.detector_score,
                "model": self.model, "embedding": [float(v) for v in self.vector]}


@dataclass(frozen=True)
class Enrolment:
    """One photo's face enrolled under an identity."""

    identity: str
    id: int  # the stored face's id
    photo: str  # its path in the index (.enrolled/<identity>/<sha256>.<ext>)
    face: int  # which face of the photo
    box: Box | None
    faces_found: int
    new: bool  # False: this face of this photo was already enrolled under the identity (nothing written)
    generation: int

    def to_dict(self) -> dict:
        return {"identity": self.identity, "id": self.id, "photo": self.photo, "face": self.face,
                "box": _list(self.box), "faces_found": self.faces_found, "new": self.new,
                "generation": self.generation}


@dataclass(frozen=True)
class Removal:
    """What a removal took out of the index."""

    identity: str | None
    faces_removed: int
    photos_removed: int
    excluded: tuple[str, ...]  # gallery-folder photos (or faces of them) later folder builds now leave out
    generation: int

    def to_dict(self) -> dict:
        """`facesearch remove --json`."""
        return {"identity": self.identity, "faces_removed": self.faces_removed, "photos_removed": self.photos_removed,
                "excluded": list(self.excluded), "generation": self.generation}


@dataclass(frozen=True)
class Compaction:
    """What a compaction did: the segments before and after (count, stored, removed, types)."""

    index_dir: str
    upgraded: bool  # an index of an older format was upgraded first
    written: bool  # False: nothing to merge (one segment, nothing removed, the same policy)
    generation: int
    faces: int
    before: dict
    after: dict  # also "specs": each segment's search structure and its tuning
    seconds: float

    def to_dict(self) -> dict:
        """`facesearch compact --json`."""
        return {"index_dir": self.index_dir, "upgraded": self.upgraded, "written": self.written,
                "generation": self.generation, "faces": self.faces, "before": self.before, "after": self.after,
                "seconds": self.seconds}


@dataclass(frozen=True)
class PersonFace:
    """A face of an unlabelled photo, as `people` lists it."""

    id: int  # the stored face's id (what `move` takes)
    path: str  # the photo's absolute path
    face: int  # its number in the photo: face N is the one `query` prints as "face N" (1 = the first)
    box: Box | None

    def to_dict(self) -> dict:
        return {"id": self.id, "path": self.path, "face": self.face, "box": _list(self.box)}


@dataclass(frozen=True)
class Person:
    """A provisional person: its faces, its name once given, else the identity it looks like (offered, never applied)."""

    person: str  # person-0001, ...
    name: str | None
    faces: tuple[PersonFace, ...]
    suggestion: tuple[str, float] | None = None  # (identity, score: mean score of its faces with that identity's)

    def to_dict(self) -> dict:
        offered = None if self.suggestion is None else {"identity": self.suggestion[0], "score": self.suggestion[1]}
        return {"person": self.person, "name": self.name, "faces": [f.to_dict() for f in self.faces],
                "suggestion": offered}


@dataclass(frozen=True)
class People:
    """Every person among the unlabelled photos' faces, largest first, and the faces in none.

    Attributes:
        threshold: the linking score the grouping used (the model's; None without any face).
        grouped: faces this call placed (new faces, or every face on a recluster).
        generation: the index generation the answer is from.
    """

    people: tuple[Person, ...]
    unclustered: tuple[PersonFace, ...]
    threshold: float | None
    grouped: int
    generation: int

    def __iter__(self) -> Iterator[Person]:
        return iter(self.people)

    def __len__(self) -> int:
        return len(self.people)

    @classmethod
    def from_view(cls, view, grouped: int, generation: int) -> People:
        """From `facesearch.index.sync.people.People` (stored positions numbered from 1, as `query` prints)."""
        from facesearch.index.sync.people import person_id

        def face(f) -> PersonFace:
            return PersonFace(f.id, f.path, f.face + 1, f.box)

        return cls(tuple(Person(person_id(g.number), g.name, tuple(face(f) for f in g.faces), g.suggestion)
                         for g in view.groups), tuple(face(f) for f in view.unclustered), view.threshold, grouped,
                   generation)

    def to_dict(self) -> dict:
        """`facesearch people --json`."""
        return {"people": [p.to_dict() for p in self.people], "unclustered": [f.to_dict() for f in self.unclustered]}


@dataclass(frozen=True)
class PeopleChange:
    """What naming, merging or moving did."""

    action: str  # "name", "merge" or "move"
    person: str | None  # the person the faces are in now; None: a face moved out (alone)
    name: str | None  # that person's name
    faces: int  # faces placed
    joined: str | None  # the person merged in, the person a name joined, or the person a face left
    generation: int

    def to_dict(self) -> dict:
        """`facesearch people name|merge|move --json`."""
        return {"action": self.action, "person": self.person, "name": self.name, "faces": self.faces,
                "joined": self.joined, "generation": self.generation}
