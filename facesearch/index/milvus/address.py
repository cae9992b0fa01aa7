"""Milvus gallery addresses (`milvus://`, `milvus+tls://`, `milvus-lite:`) and where the token comes from.

    milvus://HOST[:PORT]/[DB/]COLLECTION        a Milvus standalone or cluster (port 19530 by default)
    milvus+tls://HOST[:PORT]/[DB/]COLLECTION    the same over TLS
    milvus-lite:PATH.db[#COLLECTION]            Milvus Lite inside this process (collection `faces` by default)

Credentials never travel in the address (it is printed, logged and kept in shell history): the token
is `$FACESEARCH_MILVUS_TOKEN`, else the contents of the file `$FACESEARCH_MILVUS_TOKEN_FILE`.
Nothing here imports pymilvus.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from facesearch.embedder.core.errors import MilvusError

SCHEMES = ("milvus://", "milvus+tls://", "milvus-lite:")
DEFAULT_PORT = 19530
DEFAULT_COLLECTION = "faces"
TOKEN_ENV = "FACESEARCH_MILVUS_TOKEN"
TOKEN_FILE_ENV = "FACESEARCH_MILVUS_TOKEN_FILE"
META_SUFFIX = "__facesearch"  # the metadata collection beside COLLECTION: COLLECTION__facesearch
# Milvus's own rule for collection and database names (letters, digits, underscores; not a digit first).
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,254}\Z")
FORMS = "milvus://HOST[:PORT]/[DB/]COLLECTION, milvus+tls://HOST[:PORT]/[DB/]COLLECTION or milvus-lite:PATH.db[#COLLECTION]"


@dataclass(frozen=True)
class MilvusAddress:
    """Where a Milvus gallery lives.

    `uri` is what `pymilvus.MilvusClient` takes (`http://host:port`, `https://host:port`, or an
    absolute `.db` path for Milvus Lite); `text` is the address in its canonical form, safe to print.
    """

    uri: str
    collection: str
    db_name: str | None
    lite: bool
    text: str

    @property
    def meta_collection(self) -> str:
        """The collection holding the gallery's commit point (model card, policy, calibration, counts)."""
        return self.collection + META_SUFFIX

    def __str__(self) -> str:
        return self.text


def is_milvus_address(index) -> bool:
    """Whether `index` (a str or path given as --index or to `facesearch.open`) names a Milvus gallery."""
    if isinstance(index, os.PathLike):
        index = os.fspath(index)
    return isinstance(index, str) and index.startswith(SCHEMES)


def parse_address(text: str) -> MilvusAddress:
    """The `MilvusAddress` that `text` spells (see the module docstring).

    Raises:
        MilvusError: not one of the three forms, credentials inside it, or a bad collection name.
    """
    text = os.fspath(text) if isinstance(text, os.PathLike) else text
    if not is_milvus_address(text):
        raise MilvusError(f"'{text}' is not a Milvus address: expected {FORMS}")
    if text.startswith("milvus-lite:"):
        return _lite(text)
    tls = text.startswith("milvus+tls://")
    rest = text.split("://", 1)[1]
    host_port, _, path = rest.partition("/")
    if "@" in host_port:
        raise MilvusError("the address carries credentials: give the token in $FACESEARCH_MILVUS_TOKEN or a file "
                          "named by $FACESEARCH_MILVUS_TOKEN_FILE, never on the command line")
    host, port = _host_port(host_port, text)
    parts = [p for p in path.split("/") if p] if path else []
    if len(parts) not in (1, 2):
        raise MilvusError(f"'{_safe(text)}' names no collection: expected {FORMS}")
    db_name, collection = (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    for what, name in (("database", db_name), ("collection", collection)):
        if name is not None:
            _check_name(what, name)
    scheme = "milvus+tls" if tls else "milvus"
    canonical = f"{scheme}://{host}:{port}/" + (f"{db_name}/" if db_name else "") + collection
    return MilvusAddress(f"{'https' if tls else 'http'}://{host}:{port}", collection, db_name, False, canonical)


def _lite(text: str) -> MilvusAddress:
    path, _, collection = text[len("milvus-lite:"):].partition("#")
    if not path.endswith(".db"):
        raise MilvusError(f"'{text}': a Milvus Lite address names a data path ending in .db, e.g. "
                          "milvus-lite:gallery.db#faces")
    collection = collection or DEFAULT_COLLECTION
    _check_name("collection", collection)
    full = Path(path).expanduser().resolve()
    return MilvusAddress(str(full), collection, None, True, f"milvus-lite:{full}#{collection}")


def _host_port(host_port: str, text: str) -> tuple[str, int]:
    if not host_port:
        raise MilvusError(f"'{_safe(text)}' names no host: expected {FORMS}")
    if host_port.startswith("["):  # [ipv6]:port
        host, _, tail = host_port[1:].partition("]")
        host, port_text = f"[{host}]", tail.lstrip(":")
    else:
        host, _, port_text = host_port.partition(":")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise MilvusError(f"'{_safe(text)}': port '{port_text}' is not a port number (1-65535)")
    return host, int(port_text)


def _check_name(what: str, name: str) -> None:
    if not _NAME.match(name):
        raise MilvusError(f"{what} name '{name}' is not allowed by Milvus: letters, digits and underscores, "
                          "not starting with a digit, at most 255 characters")


def _safe(text: str) -> str:
    """`text` without anything between :// and @ (where a password would be)."""
    return re.sub(r"://[^/@]*@", "://***@", text)


def milvus_token() -> str | None:
    """The token for a Milvus server: `$FACESEARCH_MILVUS_TOKEN`, else the first line of the file named by
    `$FACESEARCH_MILVUS_TOKEN_FILE`, else None (a server without authentication).

    A token is `user:password` or an API key, as Milvus takes it.

    Raises:
        MilvusAuthError: the token file is named but cannot be read, or is empty.
    """
    from facesearch.embedder.core.errors import MilvusAuthError

    token = os.environ.get(TOKEN_ENV)
    if token:
        return token.strip()
    file = os.environ.get(TOKEN_FILE_ENV)
    if not file:
        return None
    try:
        lines = Path(file).expanduser().read_text(encoding="utf-8").strip().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise MilvusAuthError(f"cannot read the Milvus token file ${TOKEN_FILE_ENV}='{file}': {e}") from None
    if not lines or not lines[0].strip():
        raise MilvusAuthError(f"the Milvus token file ${TOKEN_FILE_ENV}='{file}' is empty")
    return lines[0].strip()
