"""What a running service is told: its index, model, limits and keys (`ServiceConfig`), and the bind rule."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from facesearch.embedder.core.errors import FaceSearchError

CONFIG_ENV = "FACESEARCH_SERVICE_CONFIG"  # how `--workers N` hands the config to each worker process
MIN_KEY_LENGTH = 16
KEY_HINT = 'make one with `python -c "import secrets; print(secrets.token_urlsafe(32))" > KEY_FILE`'


class ServiceConfigError(FaceSearchError):
    """The service cannot start as asked (a missing key file, an exposed address without a key, ...)."""


@dataclass(frozen=True)
class ServiceConfig:
    """Settings of one service; every worker process gets the same (as JSON, `CONFIG_ENV`)."""

    index_dir: str
    model_dir: str  # resolved by the CLI (the index's model, --model or the default)
    api_keys: tuple[str, ...] = ()  # empty: no authentication (loopback only, unless insecure)
    api_key_file: str | None = None  # where the keys came from: `--workers` processes read them there, not from env
    keep_photos: bool = True  # enrolled photos go into the index's photo store (facesearch.index.storage.photostore)
    max_upload_bytes: int = 20 * 1024 * 1024  # per request
    max_pixels: int = 40_000_000  # per photo, checked from its header before decoding
    max_photos: int = 32  # per enrolment request
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; none by default
    allowed_hosts: tuple[str, ...] = ()  # Host names answered (DNS rebinding); empty: any (serve on loopback sets them)
    write_wait: float = 30.0  # seconds a write waits for another writer (e.g. a CLI build) before 503
    reload_interval: float = 1.0  # seconds between checks for a generation committed by another process
    aligned: bool | None = None  # photos are ready-made crops (None: as the model card says)
    min_face_size: int | None = None
    face_threshold: float | None = None
    threads: int | None = None  # inference threads per model call (None: every core)
    # Back-pressure and the work one request may cause (facesearch.service.limits, docs/service.md).
    read_slots: int = 8  # queries, verifications, lists running at once (per worker process)
    write_slots: int = 2  # enrolments and removals running (or waiting for the index's lock) at once
    queue: int = 32  # requests of each kind waiting for a slot; beyond it, 503 at once
    queue_wait: float = 10.0  # seconds a request may wait for a slot before its 503
    body_timeout: float = 15.0  # seconds without a byte of request body before a 408
    header_timeout: float = 10.0  # seconds a connection may take to send a request's headers
    max_request_pixels: int = 400_000_000  # summed over a request's photos (32 photos of 12.5 megapixels)
    max_faces: int = 200  # faces in one photo; more is a 422 before any face is aligned or embedded

    def limits(self):
        from facesearch.service.limits import Limits

        return Limits(read_slots=self.read_slots, write_slots=self.write_slots, queue=self.queue,
                      queue_wait=self.queue_wait, body_timeout=self.body_timeout)

    def to_json(self, *, with_keys: bool = True) -> str:
        """As JSON; `with_keys=False` leaves the keys out (they are read again from `api_key_file`)."""
        d = dataclasses.asdict(self)
        if not with_keys:
            d["api_keys"] = []
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str) -> ServiceConfig:
        d = json.loads(text)
        d["api_keys"] = tuple(d.get("api_keys", ()))
        d["cors_origins"] = tuple(d.get("cors_origins", ()))
        d["allowed_hosts"] = tuple(d.get("allowed_hosts", ()))
        return cls(**d)

    @classmethod
    def from_environment(cls) -> ServiceConfig:
        text = os.environ.get(CONFIG_ENV)
        if not text:
            raise ServiceConfigError(f"${CONFIG_ENV} is not set: start the service with `facesearch serve`")
        config = cls.from_json(text)
        if config.api_key_file and not config.api_keys:  # keys never travel in the environment
            config = dataclasses.replace(config, api_keys=read_api_keys(config.api_key_file))
        return config


def read_api_keys(path: str | os.PathLike) -> tuple[str, ...]:
    """The keys in a key file: one per line (several allow a rotation); blank lines and `#` comments ignored.

    Raises:
        ServiceConfigError: the file is missing or unreadable, holds no key, or a key shorter than 16 characters.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ServiceConfigError(f"cannot read the API key file '{path}': {e}") from None
    keys = tuple(s for line in lines if (s := line.strip()) and not s.startswith("#"))
    if not keys:
        raise ServiceConfigError(f"the API key file '{path}' holds no key: {KEY_HINT}")
    if short := [k for k in keys if len(k) < MIN_KEY_LENGTH or any(c.isspace() for c in k)]:
        raise ServiceConfigError(f"the API key file '{path}' holds {len(short)} key(s) shorter than {MIN_KEY_LENGTH} "
                                 f"characters or with spaces: {KEY_HINT}")
    return keys


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the service on this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, has_key: bool, insecure: bool) -> None:
    """Refuse to expose the service beyond this machine without a key, unless told `insecure`.

    Raises:
        ServiceConfigError: `host` is not a loopback address, there is no key and not `insecure`.
    """
    if not is_loopback(host) and not has_key and not insecure:
        raise ServiceConfigError(
            f"refusing to listen on '{host}' without an API key: anyone who reaches it could search, enrol and "
            "delete faces - pass --api-key-file KEY_FILE (" + KEY_HINT + "), listen on 127.0.0.1, or pass "
            "--insecure if something in front of it (a proxy, a firewall) already controls access")


def exposure_warnings(host: str, has_key: bool, insecure: bool, cors_origins: tuple[str, ...]) -> list[str]:
    """What a start that is allowed but risky should say, one line each (`facesearch serve` logs them)."""
    out = []
    if insecure and not has_key and not is_loopback(host):
        out.append(f"listening on '{host}' with no API key (--insecure): anyone who reaches this port can search, "
                   "enrol and delete faces; keep something in front of it that controls access")
    if "*" in cors_origins:
        out.append("--cors-origin '*': any web page a user opens may call this API from their browser"
                   + ("" if has_key else ", with no key to stop it"))
    return out
