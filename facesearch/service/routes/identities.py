"""Identities and faces: enrol, list, look up, remove; and a face's thumbnail."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Path, Query, UploadFile
from fastapi.responses import Response

from facesearch.service.auth import require_key
from facesearch.service.deps import get_service, read_upload
from facesearch.service.schemas import EnrolAnswer, Error, IdentityDetail, IdentityPage, Removal, identity_path
from facesearch.service.service import FaceService

router = APIRouter(prefix="/v1", tags=["identities"], dependencies=[Depends(require_key)],
                   responses={401: {"model": Error}, 422: {"model": Error}})

Identity = Annotated[str, Depends(identity_path)]
Service = Annotated[FaceService, Depends(get_service)]
# SQLite keeps 64-bit signed integers: a larger id is a 422 here, not an OverflowError (500) below.
INT64_MAX = 2**63 - 1
FaceId = Annotated[int, Path(ge=0, le=INT64_MAX, description="a face id from a query answer or an identity")]


@router.post("/identities/{identity}/faces", response_model=EnrolAnswer, status_code=201,
             responses={409: {"model": Error}, 413: {"model": Error}, 415: {"model": Error}, 503: {"model": Error}},
             summary="Enrol one face of each photo under an identity")
def enrol(
    identity: Identity,
    photos: Annotated[list[UploadFile], File(description="one or more photos of the person")],
    service: Service,
    face: Annotated[int | None, Form(ge=0, description="which face of the photo (its position in the /v1/query "
                                                       "answer); default: the largest. One photo only.")] = None,
) -> dict:
    """All photos are enrolled in one commit, or none (a photo without a face refuses the request).
    The answer is sent once the enrolment is durable."""
    if len(photos) > service.config.max_photos:
        raise HTTPException(413, f"{len(photos)} photos in one request; the limit is {service.config.max_photos}")
    if face is not None and len(photos) != 1:
        raise HTTPException(422, f"'face' chooses a face of one photo; {len(photos)} photos were sent")
    return service.enrol(identity, [read_upload(p, service) for p in photos], face)


@router.get("/identities", response_model=IdentityPage, summary="List identities with their photo and face counts")
def identities(
    service: Service,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict:
    """Sorted by name, paged."""
    return service.identities(offset, limit)


@router.get("/identities/{identity}", response_model=IdentityDetail, responses={404: {"model": Error}},
            summary="An identity's photos and faces")
def identity(identity: Identity, service: Service) -> dict:
    return service.identity(identity)


@router.delete("/identities/{identity}", response_model=Removal, responses={404: {"model": Error}},
               summary="Remove an identity and all its faces")
def remove_identity(identity: Identity, service: Service) -> dict:
    """Enrolled photos leave the photo store. Photos of the gallery folder are excluded from later
    `build-index DIR` runs while they are unchanged (listed in `excluded`)."""
    return service.remove_identity(identity)


@router.delete("/faces/{face_id}", response_model=Removal, responses={404: {"model": Error}},
               summary="Remove one face")
def remove_face(face_id: FaceId, service: Service) -> dict:
    return service.remove_face(face_id)


@router.get("/faces/{face_id}/thumbnail", response_class=Response, responses={
    200: {"content": {"image/jpeg": {}}, "description": "the face, with a margin, as a JPEG"},
    404: {"model": Error}}, summary="A face's thumbnail from the photo it came from")
def thumbnail(face_id: FaceId, service: Service,
              size: Annotated[int, Query(ge=16, le=512, description="longest side in pixels")] = 128) -> Response:
    return Response(service.thumbnail(face_id, size), media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=60"})
