"""People among the faces of unlabelled photos: list, group, name, merge, move (facesearch.index.sync.people)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from facesearch.service.auth import require_key
from facesearch.service.deps import get_service
from facesearch.service.schemas import (
    PERSON_ID,
    Error,
    GroupRequest,
    MergeRequest,
    MoveRequest,
    NameRequest,
    PeopleAnswer,
    PeopleChange,
)
from facesearch.service.service import FaceService

router = APIRouter(prefix="/v1/people", tags=["people"], dependencies=[Depends(require_key)],
                   responses={401: {"model": Error}, 422: {"model": Error}, 503: {"model": Error}})

Service = Annotated[FaceService, Depends(get_service)]
PersonId = Annotated[str, Path(description=PERSON_ID)]
INT64_MAX = 2**63 - 1


@router.get("", response_model=PeopleAnswer, summary="The people among the unlabelled photos' faces")
def people(service: Service,
           suggestions: Annotated[bool, Query(description="offer each unnamed person the identity it looks like")] = True
           ) -> dict:
    """Largest first, from the current generation (nothing is written: faces added since the last grouping
    are counted in `pending`)."""
    return service.people(suggestions)


@router.post("/group", response_model=PeopleAnswer, summary="Group the faces not grouped yet (or all again)")
def group(service: Service, body: GroupRequest | None = None) -> dict:
    """New faces join the existing people or start new ones; `recluster` starts over, keeping names and moves."""
    return service.group_people(body.recluster if body is not None else False)


@router.post("/{person}/name", response_model=PeopleChange, responses={404: {"model": Error}},
             summary="Name a person: its faces become an identity /v1/query answers")
def name(person: PersonId, body: NameRequest, service: Service) -> dict:
    return service.name_person(person, body.name)


@router.post("/{person}/merge", response_model=PeopleChange, responses={404: {"model": Error}},
             summary="Put every face of another person into this one")
def merge(person: PersonId, body: MergeRequest, service: Service) -> dict:
    return service.merge_people(person, body.other)


@router.post("/faces/{face_id}/move", response_model=PeopleChange, responses={404: {"model": Error}},
             summary="Move a face out of its person, or into another")
def move(face_id: Annotated[int, Path(ge=0, le=INT64_MAX)], body: MoveRequest, service: Service) -> dict:
    return service.move_face(face_id, body.to)
