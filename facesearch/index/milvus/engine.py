"""The Milvus side of a gallery: the client connection, the two collections' schemas, index types.

pymilvus is imported here, and only when a Milvus gallery is opened (`import facesearch` never
loads it). Every pymilvus failure that reaches a caller leaves as a `MilvusError` subclass.

Index types: facesearch's `--index-type` names (auto, flat, hnsw, ivf) and Milvus's own (FLAT,
HNSW, IVF_FLAT, IVF_SQ8, ...) map onto what the engine builds; `--target-recall` picks the search
parameter (HNSW `ef`, IVF `nprobe`). Milvus Lite accepts IVF_PQ, DISKANN, SCANN and the GPU types
at create time, then builds nothing and scans every vector: those are refused on it, never
replaced silently.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from facesearch.embedder.core.errors import (
    IndexBusyError,
    MilvusAuthError,
    MilvusError,
    MilvusUnavailableError,
)
from facesearch.index.milvus.address import MilvusAddress

_LITE_LOCK = threading.Lock()
_LITE_USERS: dict[str, int] = {}  # open clients per Milvus Lite data path in this process
TIMEOUT = 10.0  # seconds a call may take before the server counts as unavailable
ALIVE = 1 << 62  # `removed` of a live row: no generation removes it
MAX_TOP_K = 16_384  # Milvus's limit on `limit` (topk) and on queries per search
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 200
IVF_NLIST = 1024
LITE_BUILDS = ("FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8")  # what Milvus Lite 3.2.2 really builds (its index/factory.py)
SERVER_BUILDS = LITE_BUILDS + ("IVF_PQ", "DISKANN", "SCANN", "HNSW_SQ", "AUTOINDEX")
ALIASES = {"auto": "HNSW", "flat": "FLAT", "hnsw": "HNSW", "ivf": "IVF_FLAT", "ivf_flat": "IVF_FLAT",
           "ivf_sq8": "IVF_SQ8", "sq8": "IVF_SQ8"}
# ef (HNSW) and the share of lists probed (IVF) per target recall@10: rules of thumb for 128-d face vectors,
# checked by benchmarks/milvus.py (docs/milvus.md), not tuned per gallery.
EF_FOR_RECALL = ((0.9, 32), (0.95, 64), (0.99, 128), (0.995, 256), (1.0, 512))
PROBE_SHARE_FOR_RECALL = ((0.9, 0.02), (0.95, 0.04), (0.99, 0.08), (0.995, 0.16), (1.0, 1.0))
STRING_MAX = 4096  # VARCHAR lengths of paths; identities are shorter (IDENTITY_RULE)
DOC_MAX = 65_535  # the JSON commit point


@dataclass(frozen=True)
class IndexChoice:
    """The Milvus index a gallery's vectors get, and the search parameters its queries use."""

    index_type: str  # FLAT, HNSW, IVF_FLAT, IVF_SQ8, ...
    build_params: dict
    search_params: dict
    target_recall: float

    @property
    def exact(self) -> bool:
        return self.index_type == "FLAT"

    def to_dict(self) -> dict:
        return {"index_type": self.index_type, "build_params": self.build_params, "search_params": self.search_params,
                "target_recall": self.target_recall}

    @classmethod
    def from_dict(cls, d: dict) -> IndexChoice:
        return cls(d["index_type"], dict(d["build_params"]), dict(d["search_params"]), float(d["target_recall"]))


def choose_index(index_type: str | None, target_recall: float | None, *, lite: bool) -> IndexChoice:
    """The index for `--index-type` / `--target-recall` (None: HNSW at recall 0.99).

    Raises:
        MilvusError: a type this engine does not build (Milvus Lite: IVF_PQ, DISKANN, SCANN, GPU_*),
            or one facesearch does not know.
    """
    recall = 0.99 if target_recall is None else float(target_recall)
    name = (index_type or "auto").strip()
    kind = ALIASES.get(name.lower(), name.upper())
    allowed = LITE_BUILDS if lite else SERVER_BUILDS
    if kind not in allowed:
        engine = "Milvus Lite" if lite else "facesearch on a Milvus server"
        also = (" (Milvus Lite accepts it, then builds nothing and scans every vector: refused rather than "
                "pretended)" if lite and (kind in SERVER_BUILDS or kind.startswith("GPU_")) else "")
        raise MilvusError(f"index type '{name}' is not one {engine} builds{also}; choose one of "
                          f"{', '.join(allowed)} (or auto, flat, hnsw, ivf)")
    if kind == "FLAT":
        return IndexChoice(kind, {}, {}, 1.0)
    if kind.startswith("HNSW") or kind == "AUTOINDEX":
        ef = _step(EF_FOR_RECALL, recall)
        return IndexChoice(kind, {"M": HNSW_M, "efConstruction": HNSW_EF_CONSTRUCTION}, {"ef": ef}, recall)
    if kind.startswith("IVF"):
        nprobe = max(1, math.ceil(IVF_NLIST * _step(PROBE_SHARE_FOR_RECALL, recall)))
        build = {"nlist": IVF_NLIST} | ({"m": 16, "nbits": 8} if kind == "IVF_PQ" else {})
        return IndexChoice(kind, build, {"nprobe": nprobe}, recall)
    if kind == "DISKANN":
        return IndexChoice(kind, {}, {"search_list": max(16, _step(EF_FOR_RECALL, recall))}, recall)
    return IndexChoice(kind, {}, {}, recall)  # SCANN: the server's defaults


def _step(table, recall: float):
    for at_most, value in table:
        if recall <= at_most:
            return value
    return table[-1][1]


@contextlib.contextmanager
def translated(address: MilvusAddress, doing: str) -> Iterator[None]:
    """Turn what pymilvus raises while `doing` into `MilvusUnavailableError`, `MilvusAuthError` or `MilvusError`."""
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except MilvusException as e:
        raise _error(address, doing, getattr(e, "code", None), getattr(e, "message", str(e))) from None
    except (ConnectionError, TimeoutError, OSError) as e:
        raise MilvusUnavailableError(f"Milvus at {address} did not answer while {doing} ({e}); the gallery is "
                                     "unchanged - check that the server is up and the address is right") from None


def _error(address: MilvusAddress, doing: str, code, message: str) -> MilvusError:
    text = (message or "").strip()
    low = text.lower()
    if code in (1800, 1801, 1802) or "auth" in low or "permission denied" in low or "credential" in low:
        return MilvusAuthError(f"Milvus at {address} refused the credentials while {doing} ({text}) - set "
                               "$FACESEARCH_MILVUS_TOKEN (user:password or an API key) or "
                               "$FACESEARCH_MILVUS_TOKEN_FILE")
    if code == 2 or "unavailable" in low or "fail connecting" in low or "deadline" in low:
        return MilvusUnavailableError(f"cannot reach Milvus at {address} while {doing} ({text}); the gallery is "
                                      "unchanged - start the server or check the address")
    return MilvusError(f"Milvus at {address} failed while {doing}: {text}")


def connect(address: MilvusAddress, token: str | None):
    """A `pymilvus.MilvusClient` for `address` (Milvus Lite starts inside this process for a .db path).

    Raises:
        MilvusUnavailableError: the server cannot be reached.
        MilvusAuthError: it refuses `token`.
        IndexBusyError: another process has the Milvus Lite data path open.
    """
    try:
        from pymilvus import MilvusClient
    except ImportError:
        raise MilvusError("a Milvus gallery needs pymilvus and milvus-lite: pip install 'facesearch[milvus]'") from None
    # pymilvus logs a traceback for every failed call before raising; ours says what to do instead.
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    if address.lite:
        _check_lite_free(address)
        with translated(address, "opening Milvus Lite"):
            client = MilvusClient(address.uri)
        with _LITE_LOCK:
            _LITE_USERS[address.uri] = _LITE_USERS.get(address.uri, 0) + 1
        return client
    with translated(address, "connecting"):
        client = MilvusClient(uri=address.uri, token=token or "", db_name=address.db_name or "", timeout=TIMEOUT)
        client.list_collections(timeout=TIMEOUT)  # a call the server must answer: proves the token too
        return client


def disconnect(client, address: MilvusAddress) -> None:
    """Close a client of `connect`; the last one of a Milvus Lite path in this process stops Lite, so
    that another process may open the path."""
    client.close()
    if not address.lite:
        return
    with _LITE_LOCK:
        left = _LITE_USERS.get(address.uri, 1) - 1
        if left > 0:
            _LITE_USERS[address.uri] = left
            return
        _LITE_USERS.pop(address.uri, None)
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(address.uri)


def _check_lite_free(address: MilvusAddress) -> None:
    """Raise `IndexBusyError` when another process holds the Lite data path (Lite serves one process)."""
    import fcntl
    import os

    lock = os.path.join(address.uri, "LOCK")
    if not os.path.exists(lock):
        return
    with _LITE_LOCK:
        if address.uri in _LITE_USERS:  # this process has it open
            return
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except BlockingIOError:
        raise IndexBusyError(f"{address} is open in another process: Milvus Lite serves one process at a time - "
                             "for several, run `milvus-lite server --data-dir DIR` and use milvus://HOST:PORT/"
                             f"{address.collection}") from None
    finally:
        os.close(fd)


def is_lite_server(client) -> bool:
    """Whether the server behind `client` is Milvus Lite (`milvus-lite server` answers as one)."""
    with contextlib.suppress(Exception):
        return "lite" in str(client.get_server_version()).lower()
    return False


def face_schema(dim: int):
    """The face collection: one entity per stored face, its vector and its photo's record, generation-tagged.

    `added` is the generation that wrote the row, `removed` the one that removed it (`ALIVE` while
    live): a reader of generation G sees the rows with `added <= G < removed` (writer.py).
    """
    from pymilvus import DataType, MilvusClient

    s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                   description="facesearch gallery faces")
    s.add_field("id", DataType.INT64, is_primary=True)
    s.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    s.add_field("identity", DataType.VARCHAR, max_length=1024)
    s.add_field("path", DataType.VARCHAR, max_length=STRING_MAX)
    s.add_field("face", DataType.INT64)
    s.add_field("has_box", DataType.BOOL)
    for name in ("x1", "y1", "x2", "y2"):
        s.add_field(name, DataType.FLOAT)
    s.add_field("size", DataType.INT64)
    s.add_field("mtime_ns", DataType.INT64)
    s.add_field("sha256", DataType.VARCHAR, max_length=64)
    s.add_field("n_faces", DataType.INT64)
    s.add_field("source", DataType.VARCHAR, max_length=16)
    s.add_field("added", DataType.INT64)
    s.add_field("removed", DataType.INT64)
    return s


def meta_schema():
    """The metadata collection: a few keyed JSON documents (the commit point, the writer's lease).

    Milvus wants a vector field in every collection: `unused` is a 2-d placeholder, never searched.
    """
    from pymilvus import DataType, MilvusClient

    s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False,
                                   description="facesearch gallery commit point")
    s.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
    s.add_field("doc", DataType.VARCHAR, max_length=DOC_MAX)
    s.add_field("unused", DataType.FLOAT_VECTOR, dim=2)
    return s


def create_collections(client, address: MilvusAddress, dim: int, choice: IndexChoice) -> None:
    """Create the face and metadata collections (strong consistency), with the vector index of `choice`."""
    with translated(address, "creating the gallery's collections"):
        faces = client.prepare_index_params()
        faces.add_index("vector", index_type=choice.index_type, metric_type="IP", params=choice.build_params)
        for scalar in ("identity", "path"):
            faces.add_index(scalar, index_type="INVERTED")
        client.create_collection(address.collection, schema=face_schema(dim), index_params=faces,
                                 consistency_level="Strong")
        meta = client.prepare_index_params()
        meta.add_index("unused", index_type="FLAT", metric_type="L2")
        client.create_collection(address.meta_collection, schema=meta_schema(), index_params=meta,
                                 consistency_level="Strong")


def drop_collections(client, address: MilvusAddress) -> None:
    with translated(address, "dropping the gallery's collections"):
        for name in (address.collection, address.meta_collection):
            if client.has_collection(name):
                client.drop_collection(name)
