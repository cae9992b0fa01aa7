"""uvicorn's h11 protocol with a deadline on request headers: a connection that never finishes them is closed.

uvicorn times out only idle keep-alive connections, after a response. A client that connects and sends
nothing, or half a request line, or headers without their blank line, held its connection (a socket and a
slot in the server's accept backlog) for ever; a few thousand of them take a server down (slowloris). Here a
connection must finish each request's headers within `header_timeout` seconds of its first byte (or of the
connection): else it is closed. Bodies have their own deadline (`facesearch.service.limits`).

`facesearch serve` passes this class to uvicorn (`http=`); the deadline comes from `$FACESEARCH_HEADER_TIMEOUT`,
which `serve` sets from its `--header-timeout`, so that `--workers N` processes read the same.
"""

from __future__ import annotations

import os

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT_ENV = "FACESEARCH_HEADER_TIMEOUT"
DEFAULT_HEADER_TIMEOUT = 10.0


class HeaderDeadlineProtocol(H11Protocol):
    """H11Protocol, plus: each request's headers within `header_timeout` seconds, or the connection closes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout = float(os.environ.get(HEADER_TIMEOUT_ENV) or DEFAULT_HEADER_TIMEOUT)
        self._header_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:
            self._arm()  # a request (the first, or the next on a kept-alive connection) has not finished its headers
        else:
            self._disarm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closing a connection that sent no complete request headers in %g s", self.header_timeout)
            self.transport.close()
