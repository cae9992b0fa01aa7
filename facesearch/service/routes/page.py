"""The web pages at `/` (search) and `/people`: plain HTML, CSS and JavaScript from this package; nothing fetched from elsewhere.

The page itself holds no data (it is public, like /docs); everything it shows comes from the
/v1 API, with the key the user types in when the server has one.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/people")
async def people_page() -> FileResponse:
    return FileResponse(STATIC_DIR / "people.html", media_type="text/html")
