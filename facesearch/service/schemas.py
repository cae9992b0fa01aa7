"""Pydantic models of every request part and answer of the service (they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

import facesearch.index.sync.enrolment as _enrolment

Box = Annotated[list[float] | None, Field(description="x1, y1, x2, y2 in the photo's pixels; null for a pre-aligned crop")]

# The rule is the library's (facesearch.index.sync.enrolment): the API and the service refuse the same names;
# an IdentityNameError answers 422 (facesearch.service.app.STATUS).
IDENTITY_RULE = _enrolment.IDENTITY_RULE
check_identity = _enrolment.check_identity


def identity_path(identity: Annotated[str, Path(description=IDENTITY_RULE)]) -> str:
    """The `{identity}` path parameter, checked (a FastAPI dependency)."""
    return check_identity(identity)


class Error(BaseModel):
    detail: str = Field(description="what went wrong and what to do")


class Match(BaseModel):
    identity: str
    score: float = Field(description="inner product of L2-normalised embeddings (cosine); higher is more alike")
    path: str = Field(description="the best-matching photo: relative to the gallery folder, or .enrolled/... "
                                  "for a photo enrolled through this API")
    box: Box
    id: int = Field(description="the stored face's id (GET /v1/faces/{id}/thumbnail, DELETE /v1/faces/{id})")


DecisionRecord = Annotated[dict | None, Field(description="how the face was judged (facesearch.index.openset.decision): rule "
                                                          "('score' or 'margin'), fusion, threshold, statistic, ...")]


class FaceAnswer(BaseModel):
    # Whatever `facesearch query --json` gives a face is passed on, also fields added after this model.
    model_config = ConfigDict(extra="allow")
    box: Box
    verdict: str = Field(description="the matched identity, or 'unknown'")
    known: bool
    identity: str | None
    threshold: float
    matches: list[Match] = Field(description="top identities, best first, each by its best-matching face")
    decision: DecisionRecord = None


class QueryAnswer(BaseModel):
    model_config = ConfigDict(extra="allow")
    image: str = Field(description="the uploaded file's name")
    index: str
    model: str
    threshold: float
    threshold_source: str = Field(description="where the threshold comes from: --threshold (the request's), "
                                              "calibration, --fpir (the request's, through the calibration), "
                                              "model-card or default (as `facesearch query --json` says it)")
    generation: int = Field(description="the index generation that answered")
    faces: list[FaceAnswer] = Field(description="every face found, highest detector score first")


class VerifyPhoto(BaseModel):
    image: str
    box: Box
    faces_found: int = Field(description="faces in the photo; the largest is compared")


class VerifyAnswer(BaseModel):
    score: float
    same: bool = Field(description="score >= threshold")
    threshold: float
    threshold_source: str
    model: str
    photos: list[VerifyPhoto]


class EnrolledFace(BaseModel):
    id: int
    image: str = Field(description="the uploaded file's name")
    photo: str = Field(description="the photo's path in the index (.enrolled/<identity>/<sha256>.<ext>)")
    sha256: str
    face: int = Field(description="position of the enrolled face among the photo's faces")
    box: Box
    faces_found: int
    new: bool = Field(description="false when this face of this photo was already enrolled (nothing written)")


class EnrolAnswer(BaseModel):
    identity: str
    generation: int = Field(description="the committed generation holding the enrolment (durable)")
    photos_kept: bool = Field(description="whether the photos went into the index's photo store")
    faces: list[EnrolledFace]


class IdentitySummary(BaseModel):
    identity: str
    photos: int
    faces: int


class IdentityPage(BaseModel):
    identities: list[IdentitySummary]
    offset: int
    limit: int
    total: int = Field(description="identities in the index")
    generation: int


class StoredFace(BaseModel):
    id: int
    face: int
    box: Box


class IdentityPhoto(BaseModel):
    path: str
    source: Literal["folder", "api", "unlabeled"] = Field(description="'folder': mirrors the gallery folder "
                                                                      "(build-index DIR); 'api': enrolled through this "
                                                                      "API; 'unlabeled': build-index DIR --unlabeled")
    sha256: str
    size: int
    faces_found: int
    faces: list[StoredFace]


class IdentityDetail(BaseModel):
    identity: str
    generation: int
    faces: int
    photos: list[IdentityPhoto]


class Removal(BaseModel):
    identity: str | None
    faces_removed: int
    photos_removed: int
    excluded: list[str] = Field(description="gallery-folder photos a later `build-index DIR` leaves out while they "
                                            "are unchanged (README: who owns what)")
    generation: int


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    generation: int
    detail: str | None = Field(description="why a newer generation on disk is not answered from (degraded)")


class Segment(BaseModel):
    kind: str
    count: int


class Stats(BaseModel):
    faces: int
    photos: int
    identities: int
    generation: int
    index: str = Field(description="the index folder's name (answers carry no server paths)")
    index_type: str = Field(description="the index's policy: auto, flat, hnsw or ivf (segments say what each is)")
    segments: list[Segment]
    removed_in_segments: int
    model: str
    dim: int
    crop_method: str
    threshold: float
    threshold_source: str
    decision: DecisionRecord
    source_dir: str | None = Field(description="the name of the gallery folder it was built from, if any")
    keep_photos: bool
    auth: bool
    problem: str | None
    uptime_s: float


PERSON_ID = "a person as GET /v1/people lists it: person-0001, ..."


class PersonFace(BaseModel):
    id: int = Field(description="the stored face's id (GET /v1/faces/{id}/thumbnail, POST /v1/people/faces/{id}/move)")
    path: str = Field(description="the unlabelled photo's absolute path")
    face: int = Field(description="its number in the photo: face N is the one /v1/query lists N-th (1 = the first)")
    box: Box


class Suggestion(BaseModel):
    identity: str = Field(description="a named identity this person looks like (offered, never applied)")
    score: float = Field(description="mean score of the person's faces with that identity's faces")


class Person(BaseModel):
    person: str = Field(description=PERSON_ID)
    name: str | None = Field(description="the identity it was named (query answers it); null until named")
    faces: list[PersonFace]
    suggestion: Suggestion | None


class PeopleAnswer(BaseModel):
    people: list[Person] = Field(description="largest first")
    unclustered: list[PersonFace] = Field(description="grouped faces that match no one (or were moved out)")
    pending: int = Field(description="faces of unlabelled photos not grouped yet (POST /v1/people/group)")
    grouped: int = Field(description="faces this request placed")
    threshold: float | None = Field(description="the linking score of the grouping (the model's); null: no face")
    generation: int


class GroupRequest(BaseModel):
    recluster: bool = Field(False, description="group every face again (names and moved faces are kept)")


class NameRequest(BaseModel):
    name: str = Field(description="the identity the person becomes (one of that name takes the faces in)")


class MergeRequest(BaseModel):
    other: str = Field(description="the person whose faces join this one: " + PERSON_ID)


class MoveRequest(BaseModel):
    to: str | None = Field(None, description="the person the face goes into; null: out of its person (alone)")


class PeopleChange(BaseModel):
    action: Literal["name", "merge", "move"]
    person: str | None = Field(description="the person the faces are in now; null: the face is alone")
    name: str | None
    faces: int = Field(description="faces placed")
    joined: str | None = Field(description="the person merged in, the one a name joined, or the one a face left")
    generation: int = Field(description="the committed generation holding the change (durable)")
