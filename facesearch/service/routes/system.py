"""GET /v1/health (no key needed: for load balancers) and GET /v1/stats."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from facesearch.service.auth import require_key
from facesearch.service.deps import get_service
from facesearch.service.schemas import Error, Health, Stats
from facesearch.service.service import FaceService

router = APIRouter(prefix="/v1", tags=["system"])


@router.get("/health", response_model=Health, summary="Whether the server answers (no key needed)")
async def health(service: Annotated[FaceService, Depends(get_service)]) -> dict:
    # async: no blocking work, and it keeps answering when the thread pool is saturated.
    return service.health()


@router.get("/stats", response_model=Stats, dependencies=[Depends(require_key)], responses={401: {"model": Error}},
            summary="Faces, identities, index type, model, threshold and its source")
def stats(service: Annotated[FaceService, Depends(get_service)]) -> dict:
    return service.stats()
