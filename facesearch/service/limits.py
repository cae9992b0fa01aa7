"""Back-pressure: how many requests run at once, how many wait, and for how long; a stalled body's deadline.

A saturated server answers 503 with `Retry-After` within a bounded time instead of queueing without limit:

- Requests to the API (`/v1/...` but `/v1/health`) take a slot of their class before any of their body is read:
  **writes** (POST, PUT, PATCH, DELETE: enrolments, removals) and **reads** (queries, verifications, lists,
  thumbnails) have separate slots, so writes waiting for the index's write lock (a CLI build, a compaction's
  swap) never take the threads that queries need. Both together stay below the thread pool's 40 threads.
- A request that finds every slot of its class taken waits in a short queue; when the queue is full, or its
  wait runs past `queue_wait` seconds, it is answered 503 at once. Its body has not been read: a waiting
  request costs a socket and a few bytes, so memory stays flat however many arrive.
- A body that stops arriving (a client that sent its headers and part of an upload) is cut after
  `body_timeout` seconds without a byte: 408, and the request's slot and temporary files are freed.
  Headers that never finish are the protocol's job (`facesearch.service.protocol`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from fastapi import HTTPException
from fastapi.responses import JSONResponse

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
READ_ONLY_POSTS = ("/v1/query", "/v1/verify")  # POSTs that change nothing: they are reads
UNLIMITED = ("/v1/health",)  # load balancers must get an answer from a saturated server
RETRY_AFTER = "2"  # seconds: a slot frees within about one request's time


@dataclass(frozen=True)
class Limits:
    """The settings (`ServiceConfig.limits()`; `facesearch serve` options set them)."""

    read_slots: int = 8
    write_slots: int = 2
    queue: int = 32  # requests of each class waiting for a slot, beyond which it is 503 at once
    queue_wait: float = 10.0  # seconds a request may wait for a slot
    body_timeout: float = 15.0  # seconds without a byte of body before a 408


class _Pool:
    """`slots` requests at once, `queue` more waiting (asyncio: one event loop per worker process)."""

    def __init__(self, slots: int, queue: int):
        self.slots = asyncio.Semaphore(slots)
        self.queue = queue
        self.waiting = 0

    @contextlib.asynccontextmanager
    async def slot(self, wait: float):
        """Hold a slot; raises `Saturated` when the queue is full or the wait runs out."""
        if self.slots.locked():
            if self.waiting >= self.queue:
                raise Saturated("queue full")
            self.waiting += 1
            try:
                await asyncio.wait_for(self.slots.acquire(), wait)
            except TimeoutError:
                raise Saturated(f"no slot within {wait:g} s") from None
            finally:
                self.waiting -= 1
        else:
            await self.slots.acquire()
        try:
            yield
        finally:
            self.slots.release()


class Saturated(Exception):
    pass


class BodyTimeout(HTTPException):
    """Raised from `receive`: FastAPI answers it while it parses the form, as it does the body limit's 413."""

    def __init__(self, timeout: float):
        super().__init__(408, f"the request body stopped arriving ({timeout:g} s without a byte)",
                         headers={"Connection": "close"})


class Admission:
    """ASGI middleware: the slots, queues and body deadline above."""

    def __init__(self, app, limits: Limits):
        self.app = app
        self.limits = limits
        self.pools: dict[str, _Pool] | None = None  # made on the first request, inside the server's event loop

    def _pool(self, method: str, path: str) -> _Pool | None:
        if not path.startswith("/v1/") or path.startswith(UNLIMITED) or method == "OPTIONS":
            return None
        if self.pools is None:
            self.pools = {"read": _Pool(self.limits.read_slots, self.limits.queue),
                          "write": _Pool(self.limits.write_slots, self.limits.queue)}
        write = method in WRITE_METHODS and not path.startswith(READ_ONLY_POSTS)
        return self.pools["write" if write else "read"]

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or (pool := self._pool(scope["method"], scope["path"])) is None:
            return await self.app(scope, receive, send)
        timeout = self.limits.body_timeout
        started = False

        body_done = False

        async def timed_receive():
            nonlocal body_done
            if body_done:  # after the body, receive() waits for the client to go away: no deadline on that
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout)
            except TimeoutError:
                raise BodyTimeout(timeout) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            async with pool.slot(self.limits.queue_wait):
                await self.app(scope, timed_receive, tracking_send)
        except Saturated as e:
            answer = JSONResponse({"detail": f"the server is busy ({e}); try again in a moment"}, status_code=503,
                                  headers={"Retry-After": RETRY_AFTER})
            await answer(scope, receive, send)
        except BodyTimeout as e:  # a body read outside FastAPI's form parsing
            if not started:
                await JSONResponse({"detail": e.detail}, status_code=408, headers=e.headers)(scope, receive, send)
