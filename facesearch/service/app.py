"""The FastAPI app: lifespan (model and index loaded once), middleware, error answers, routers.

Middleware, outermost first: the request log (one line per request: method, path, status, ms), the guard
(Host, Origin, the key before the body: `guard`), admission (slots, queues, 503 when saturated, the body's
deadline: `limits`), the body limit (413 before a large upload is read), CORS when origins are configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from facesearch.embedder.core.errors import (
    DatasetError,
    FaceSearchError,
    IdentityNameError,
    ImageReadError,
    IndexBusyError,
    IndexFormatError,
    IndexMismatchError,
    NoFaceFoundError,
    NotFoundError,
    PeopleError,
)
from facesearch.index.openset.calibration import CalibrationError
from facesearch.service.config import ServiceConfig
from facesearch.service.guard import Guard
from facesearch.service.limits import Admission
from facesearch.service.routes import identities, page, people, search, system
from facesearch.service.routes.page import STATIC_DIR
from facesearch.service.service import FaceService

log = logging.getLogger("facesearch.service")

# FaceSearchError subclasses that reach the HTTP layer, and the status each answers with.
STATUS = ((ImageReadError, 422), (NoFaceFoundError, 422), (DatasetError, 422), (CalibrationError, 422),
          (IdentityNameError, 422), (PeopleError, 422), (NotFoundError, 404), (IndexMismatchError, 409), (IndexBusyError, 503), (IndexFormatError, 503))
RETRY_AFTER = {IndexBusyError: "10"}  # seconds a client should wait before it tries again

DESCRIPTION = """Face search over a facesearch index: who is in a photo (`/v1/query`), are two photos the same
person (`/v1/verify`), enrol and remove people while the server answers. With `--api-key-file`, every
endpoint but `/v1/health` needs `Authorization: Bearer <key>` ("Authorize" above)."""


def create_app(config: ServiceConfig, service: FaceService | None = None) -> FastAPI:
    """The app for `config`; the model and index load in its lifespan (or `service` is used as it is)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = service is None
        app.state.service = await run_in_threadpool(FaceService.start, config) if own else service
        watcher = asyncio.create_task(_watch(app.state.service, config.reload_interval))
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if own:
                app.state.service.close()

    app = _fastapi(lifespan)
    app.include_router(search.router)
    app.include_router(identities.router)
    app.include_router(people.router)
    app.include_router(system.router)
    app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _error_answers(app)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST",
                           "DELETE"], allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(BodyLimit, max_bytes=config.max_upload_bytes)
    app.add_middleware(Admission, limits=config.limits())
    app.add_middleware(Guard, allowed_hosts=config.allowed_hosts, cors_origins=config.cors_origins,
                       api_keys=config.api_keys)
    app.add_middleware(RequestLog)
    return app


def create_app_from_environment() -> FastAPI:
    """`create_app` with the config `facesearch serve` put in the environment (a `--workers N` process)."""
    if not logging.getLogger().handlers:  # a fresh worker process: log as the parent does
        logging.basicConfig(level=os.environ.get("FACESEARCH_SERVICE_LOG_LEVEL", "INFO"),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return create_app(ServiceConfig.from_environment())


def _fastapi(lifespan) -> FastAPI:
    kwargs = {"title": "facesearch", "description": DESCRIPTION, "version": "1", "lifespan": lifespan}
    try:  # Swagger UI's files from a package, not a CDN: /docs works on a machine without internet
        from fastapi_offline import FastAPIOffline
    except ImportError:
        return FastAPI(**kwargs)
    return FastAPIOffline(**kwargs, redoc_url=None, static_url="/static-docs")


async def _watch(service: FaceService, interval: float) -> None:
    """Pick up generations committed by other processes (a CLI build, another worker) between requests."""
    while True:
        await asyncio.sleep(interval)
        try:
            await run_in_threadpool(service.snapshots.refresh, False, False)
        except Exception:  # keep watching; the request path reports what is wrong
            log.exception("checking the index for a new generation failed")


def _error_answers(app: FastAPI) -> None:
    @app.exception_handler(FaceSearchError)
    async def facesearch_error(request: Request, e: FaceSearchError) -> JSONResponse:
        status = next((s for kind, s in STATUS if isinstance(e, kind)), 500)
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, e)
        retry = next((v for kind, v in RETRY_AFTER.items() if isinstance(e, kind)), None)
        return JSONResponse({"detail": str(e)}, status_code=status, headers={"Retry-After": retry} if retry else None)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error ({type(e).__name__}); the server log has the details"},
                            status_code=500)


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body larger than {limit:,} bytes (the server's --max-upload-mb)")


class BodyLimit:
    """413 for a request body over `max_bytes`: at once from Content-Length, else while it streams in."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = JSONResponse({"detail": BodyTooLarge(self.max_bytes).detail}, status_code=413,
                                    headers={"Connection": "close"})
            return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)  # FastAPI answers it while parsing the form
            return message

        await self.app(scope, limited, send)


class RequestLog:
    """One log line per request: method, path, status, milliseconds."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500

        async def send_logged(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_logged)
        finally:
            # The path as sent, control characters escaped: a decoded %0A would forge a log line.
            path = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
            shown = path.decode("ascii", "backslashreplace").encode("unicode_escape").decode("ascii")
            log.info("%s %s %d %.1f ms", scope["method"], shown, status, (time.perf_counter() - started) * 1000)

