"""What a browser can be tricked into sending: refused before any route runs; headers that keep the page safe.

- An unknown `Host` (DNS rebinding: a page on attacker.example that resolves to 127.0.0.1) gets a 400
  when the server knows its names (`ServiceConfig.allowed_hosts`; `facesearch serve` on loopback sets
  localhost, 127.0.0.1 and ::1).
- A state-changing request (POST, PUT, PATCH, DELETE) from another origin gets a 403: a form on
  another site is a "simple" request that needs no CORS preflight, so CORS alone does not stop it.
  Same-origin requests, origins given with --cors-origin, and clients that send no `Origin` (curl,
  scripts) pass.
- With API keys, a request that sends a body to the API (POST, PUT, PATCH under /v1/) is checked for
  its key before the body is read: 1,500 form parts without a key were parsed (and spooled to disk)
  before the 401, and clients that stopped mid-upload held those files.
- Every answer carries nosniff, no framing and no referrer; the page and the API also a
  Content-Security-Policy that allows only this server's own scripts (Swagger UI's /docs keeps its own).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi.responses import JSONResponse

from facesearch.service.auth import KEY_MESSAGE, key_matches

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]
CSP = (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                                   b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
OWN_CSP_PREFIXES = ("/docs", "/static-docs", "/openapi.json")  # Swagger UI runs inline scripts of its own


def host_name(host: str) -> str:
    """The name of a Host header value, without its port: 'localhost:8000' -> 'localhost', '[::1]:80' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """ASGI middleware: the Host and Origin rules above, and the security headers on every answer."""

    def __init__(self, app, *, allowed_hosts: tuple[str, ...] = (), cors_origins: tuple[str, ...] = (),
                 api_keys: tuple[str, ...] = ()):
        self.app = app
        self.api_keys = api_keys
        self.allowed_hosts = frozenset(host_name(h) for h in allowed_hosts)
        self.cors_origins = frozenset(o.rstrip("/").lower() for o in cors_origins)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        refusal = self._refusal(scope["method"], host, headers.get("origin"), headers.get("sec-fetch-site")) \
            or self._unkeyed_body(scope["method"], scope["path"], headers.get("authorization"))
        extra = HEADERS + ([] if scope["path"].startswith(OWN_CSP_PREFIXES) else [CSP])

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                message = message | {"headers": [*message.get("headers", []), *extra]}
            await send(message)

        if refusal is not None:
            status, detail = refusal
            answer = JSONResponse({"detail": detail}, status_code=status,
                                  headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)
            return await answer(scope, receive, send_with_headers)
        await self.app(scope, receive, send_with_headers)

    def _refusal(self, method: str, host: str, origin: str | None, fetch_site: str | None) -> tuple[int, str] | None:
        if self.allowed_hosts and host_name(host) not in self.allowed_hosts:
            shown = host.encode("ascii", "backslashreplace").decode()[:100]
            return 400, (f"Host '{shown}' is not a name this server answers to ({', '.join(sorted(self.allowed_hosts))});"
                         " start it with --allowed-host NAME to add one")
        if method not in STATE_CHANGING:
            return None
        if origin is not None and origin.lower() != "null":
            if origin.rstrip("/").lower() in self.cors_origins or urlsplit(origin).netloc.lower() == host.lower():
                return None
        elif origin is None and fetch_site in (None, "same-origin", "none"):
            return None  # not from a browser (curl, a script), or the browser says it is this page
        return 403, (f"a {method} from another origin ({origin or fetch_site}) is refused: browsers send those on "
                     "behalf of other sites; allow an origin with --cors-origin")

    def _unkeyed_body(self, method: str, path: str, authorization: str | None) -> tuple[int, str] | None:
        if not self.api_keys or method not in STATE_CHANGING or method == "DELETE" or not path.startswith("/v1/"):
            return None  # DELETEs carry no body: the routes' own check answers them
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() == "bearer" and key_matches(given.strip(), self.api_keys):
            return None
        return 401, KEY_MESSAGE
