"""`facesearch serve`: the face-search service (HTTP API + web page) on uvicorn, model and index loaded once."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Annotated, Optional

import typer

from facesearch.cli.options import (
    AlignedOpt,
    FaceThresholdOpt,
    IndexOpt,
    MinFaceOpt,
    ModelOpt,
    friendly_errors,
    index_dir,
)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@friendly_errors
def serve(
    index: IndexOpt = None,
    model: ModelOpt = None,
    host: Annotated[str, typer.Option(help="Address to listen on; anything but loopback needs --api-key-file (or --insecure).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    api_key_file: Annotated[Optional[Path], typer.Option("--api-key-file", help="File of API keys, one per line: every endpoint but /v1/health then needs 'Authorization: Bearer <key>'.")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="Listen on a non-loopback address without a key (only behind something that controls access).")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Server processes, each with the model loaded; writes stay one at a time.")] = 1,
    keep_photos: Annotated[bool, typer.Option("--keep-photos/--no-keep-photos", help="Keep enrolled photos in the index's photo store (a rebuild then embeds them again).")] = True,
    max_upload_mb: Annotated[float, typer.Option(min=0.01, help="Largest request body, in MiB (413 above).")] = 20.0,
    max_pixels: Annotated[int, typer.Option(min=1, help="Largest photo, in pixels, read from its header before decoding (413 above).")] = 40_000_000,
    cors_origin: Annotated[Optional[list[str]], typer.Option("--cors-origin", help="A browser origin allowed to call the API (repeat for several); none by default.")] = None,
    allowed_host: Annotated[Optional[list[str]], typer.Option("--allowed-host", help="A Host name the server answers to (repeat for several); on loopback localhost, 127.0.0.1 and ::1 are always allowed; elsewhere none given means any.")] = None,
    aligned: AlignedOpt = False,
    min_face_size: MinFaceOpt = None,
    face_threshold: FaceThresholdOpt = None,
    threads: Annotated[Optional[int], typer.Option(min=1, help="Inference threads per model call (default: every core).")] = None,
    write_wait: Annotated[float, typer.Option(min=0.0, help="Seconds a write waits for another writer (e.g. a build-index) before answering 503.")] = 30.0,
    read_slots: Annotated[int, typer.Option(min=1, help="Queries, verifications and lists run at once, per worker.")] = 8,
    write_slots: Annotated[int, typer.Option(min=1, help="Enrolments and removals run (or wait for the index) at once, per worker.")] = 2,
    queue: Annotated[int, typer.Option(min=0, help="Requests of each kind waiting for a slot; beyond, 503 with Retry-After at once.")] = 32,
    queue_wait: Annotated[float, typer.Option(min=0.0, help="Seconds a request waits for a slot before its 503.")] = 10.0,
    body_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds without a byte of request body before a 408.")] = 15.0,
    header_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds a connection has to send a request's headers before it is closed.")] = 10.0,
    max_request_pixels: Annotated[int, typer.Option(min=1, help="Pixels of all photos of one request together (413 above).")] = 400_000_000,
    max_faces: Annotated[int, typer.Option(min=1, help="Faces in one photo (422 above, before any is aligned or embedded).")] = 200,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
):
    """Answer queries over HTTP, enrol and remove people live; a web page at /, API docs at /docs.

    The model, detector and index load once; a `build-index` on the same index is picked up without
    a restart. Ctrl-C or SIGTERM finish the requests in flight, then exit.
    """
    from facesearch.service import ServiceConfig, check_bind, read_api_keys

    keys = read_api_keys(api_key_file) if api_key_file is not None else ()
    check_bind(host, bool(keys), insecure)
    folder = index_dir(index)
    config = ServiceConfig(
        index_dir=str(folder.expanduser().resolve()), model_dir=str(_model_dir(model, folder)), api_keys=keys,
        api_key_file=str(api_key_file.expanduser().resolve()) if api_key_file is not None else None,
        keep_photos=keep_photos, max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels,
        cors_origins=tuple(cors_origin or ()), allowed_hosts=_allowed_hosts(host, allowed_host or ()),
        write_wait=write_wait, aligned=aligned or None,
        min_face_size=min_face_size, face_threshold=face_threshold, threads=threads, read_slots=read_slots,
        write_slots=write_slots, queue=queue, queue_wait=queue_wait, body_timeout=body_timeout,
        header_timeout=header_timeout, max_request_pixels=max_request_pixels, max_faces=max_faces)
    from facesearch.service.config import exposure_warnings

    for line in exposure_warnings(host, bool(keys), insecure, config.cors_origins):
        typer.echo(f"Warning: {line}", err=True)
    run_server(config, host=host, port=port, workers=workers, log_level=log_level)


def _allowed_hosts(host: str, given) -> tuple[str, ...]:
    """On loopback the loopback names (a keyless server there is what DNS rebinding reaches) and those
    given; elsewhere those given, or none (any Host)."""
    from facesearch.service.config import is_loopback
    from facesearch.service.guard import LOOPBACK_NAMES

    return (*LOOPBACK_NAMES, *given) if is_loopback(host) else tuple(given)


def _model_dir(model: Path | None, index: Path) -> Path:
    """--model, else $FACESEARCH_MODEL, else the index's model, else the default (installed at first use)."""
    from facesearch.api.models import recorded_model
    from facesearch.cli.models import resolve_model

    return resolve_model(model, recorded=recorded_model(index)).expanduser().resolve()


def run_server(config, *, host: str, port: int, workers: int = 1, log_level: str = "info") -> None:
    """Run the service until Ctrl-C / SIGTERM (uvicorn finishes the requests in flight first)."""
    import uvicorn

    from facesearch.service import create_app
    from facesearch.service.config import CONFIG_ENV
    from facesearch.service.service import FaceService

    level = log_level.upper()
    logging.basicConfig(level=level, format=LOG_FORMAT)
    from facesearch.service.protocol import HEADER_TIMEOUT_ENV, HeaderDeadlineProtocol

    os.environ[HEADER_TIMEOUT_ENV] = str(config.header_timeout)  # read by each connection, in every worker
    options = {"host": host, "port": port, "log_config": None, "log_level": log_level.lower(), "access_log": False,
               "timeout_graceful_shutdown": 30, "http": HeaderDeadlineProtocol}
    if workers == 1:
        service = FaceService.start(config)  # here, so that a bad model or index is an `Error: ...` line
        try:
            with _stop_is_success():
                uvicorn.run(create_app(config, service=service), **options)
        finally:
            service.close()
        return
    # Once here, before the workers: a bad model or index is an `Error: ...` line and exit 1, and a new
    # index is created by one process (workers racing to create it failed 2 starts in 7).
    FaceService.start(config, warm=False).close()
    os.environ[CONFIG_ENV] = config.to_json(with_keys=False)  # the workers read the keys from the key file
    os.environ["FACESEARCH_SERVICE_LOG_LEVEL"] = level
    with _stop_is_success():
        uvicorn.run("facesearch.service.app:create_app_from_environment", factory=True, workers=workers, **options)


@contextlib.contextmanager
def _stop_is_success():
    """A stop asked for (Ctrl-C, SIGTERM) ends with exit code 0 once uvicorn has finished the requests in flight.

    uvicorn handles the signal itself (graceful shutdown), then raises it again for the handler it
    found installed; this one lets the command return normally instead of dying of the signal.
    """
    stopped = []
    handlers = {sig: signal.signal(sig, lambda s, _frame: stopped.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if stopped:
        logging.getLogger("facesearch.service").info("stopped by %s", signal.Signals(stopped[0]).name)
