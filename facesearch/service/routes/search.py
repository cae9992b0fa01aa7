"""POST /v1/query (who is in this photo?) and POST /v1/verify (are these two photos the same person?)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Query, UploadFile

from facesearch.service.auth import require_key
from facesearch.service.deps import get_service, read_upload
from facesearch.service.schemas import Error, QueryAnswer, VerifyAnswer
from facesearch.service.service import FaceService

router = APIRouter(prefix="/v1", tags=["search"], dependencies=[Depends(require_key)],
                   responses={401: {"model": Error}, 413: {"model": Error}, 415: {"model": Error},
                              422: {"model": Error}})

Threshold = Annotated[float | None, Query(ge=-1.0, le=3.0, description="score below which a face is 'unknown' "
                                                                        "(default: see threshold_source)")]


@router.post("/query", response_model=QueryAnswer, summary="Find the identities of every face in a photo")
def query(
    photo: Annotated[UploadFile, File(description="a photo (JPEG, PNG, WebP, GIF, BMP, TIFF)")],
    service: Annotated[FaceService, Depends(get_service)],
    k: Annotated[int, Query(ge=1, le=100, description="identities listed per face")] = 5,
    threshold: Threshold = None,
    fpir: Annotated[float | None, Query(gt=0.0, lt=1.0, description="answer at this false-positive identification "
                                                                     "rate (needs a calibrated index: "
                                                                     "`facesearch calibrate`)")] = None,
) -> dict:
    """Every face of the photo, with its box and ranked identities, and a verdict per face (the content of
    `facesearch query --json`)."""
    return service.query(read_upload(photo, service), k=k, threshold=threshold, fpir=fpir)


@router.post("/verify", response_model=VerifyAnswer, summary="Compare the largest faces of two photos")
def verify(
    photo1: Annotated[UploadFile, File(description="the first photo")],
    photo2: Annotated[UploadFile, File(description="the second photo")],
    service: Annotated[FaceService, Depends(get_service)],
    threshold: Threshold = None,
) -> dict:
    """Score of the two largest faces and same/different at the model card's pair threshold."""
    return service.verify(read_upload(photo1, service), read_upload(photo2, service), threshold=threshold)
