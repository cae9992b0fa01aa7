"""API keys: `Authorization: Bearer <key>` on every endpoint but /v1/health, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

KEY_MESSAGE = ("missing or wrong API key: send the header 'Authorization: Bearer <key>' with a key from the "
               "server's --api-key-file")
bearer = HTTPBearer(auto_error=False, description="a key from the server's --api-key-file")


def key_matches(given: str, keys: tuple[str, ...]) -> bool:
    """Whether `given` is one of `keys`; the time taken does not depend on where they differ.

    Both sides are hashed first, so the comparison is of equal-length digests, and every key is
    compared (no early exit on the first match).
    """
    digest = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    found = False
    for key in keys:
        found |= hmac.compare_digest(digest, hashlib.sha256(key.encode("utf-8")).digest())
    return found


def require_key(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
    """A FastAPI dependency: 401 unless the request carries one of the service's keys (none set: open)."""
    keys = request.app.state.service.config.api_keys
    if not keys:
        return
    if credentials is None or not key_matches(credentials.credentials, keys):
        raise HTTPException(401, KEY_MESSAGE, headers={"WWW-Authenticate": "Bearer"})
