"""Shared state as FastAPI dependencies: the running `FaceService` (set up by the app's lifespan)."""

from __future__ import annotations

from fastapi import Request, UploadFile

from facesearch.service.service import FaceService
from facesearch.service.uploads import Upload, check_photo


def get_service(request: Request) -> FaceService:
    return request.app.state.service


def read_upload(file: UploadFile, service: FaceService) -> Upload:
    """An uploaded file, checked from its header (`facesearch.service.uploads.check_photo`); blocking."""
    data = file.file.read()
    return check_photo(file.filename or "upload", file.content_type, data, max_pixels=service.config.max_pixels)
