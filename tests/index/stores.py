"""The two places a gallery can live, behind one small interface, so that index tests run on both.

`FolderStore` is an index folder; `MilvusStore` a Milvus collection: Milvus Lite in this process
(`milvus-lite:PATH.db#COLLECTION`), a `milvus-lite server` on a loopback port, or the server named by
$FACESEARCH_TEST_MILVUS (`make test-milvus MILVUS=milvus://host:19530/coll`).
"""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

EXTERNAL_ENV = "FACESEARCH_TEST_MILVUS"
_numbers = itertools.count()


class FolderStore:
    kind = "folder"

    def __init__(self, tmp: Path):
        self.index = tmp / "gallery.idx"

    def build(self, root: Path, embedder, **options):
        from facesearch.index import build_index

        return build_index(root, self.index, embedder, **_folder_options(options))

    def ingest(self, shards: Path, **options):
        from facesearch.index.sync.ingest import build_index_from_embeddings

        return build_index_from_embeddings(shards, self.index, **_folder_options(options))

    def open(self):
        from facesearch.index import GalleryIndex

        return GalleryIndex.open(self.index)

    def close(self) -> None:
        pass


def _folder_options(options: dict) -> dict:
    kind = options.pop("index_type", None)
    if kind is not None:
        from facesearch.index.storage.manifest import IndexPolicy

        options["policy"] = IndexPolicy(index_type=kind.lower())
    return options


class MilvusStore:
    """A Milvus gallery at `address` (FLAT unless a test asks for another index type: exact like a flat folder)."""

    def __init__(self, kind: str, address: str):
        from facesearch.index.milvus.address import parse_address

        self.kind = kind
        self.index = address
        self.address = parse_address(address)

    def build(self, root: Path, embedder, **options):
        from facesearch.index.milvus.build import build_from_photos

        options.setdefault("index_type", "flat")
        return build_from_photos(root, self.address, None, embedder, **options)

    def ingest(self, shards: Path, **options):
        from facesearch.index.milvus.build import build_from_embeddings

        options.setdefault("index_type", "flat")
        return build_from_embeddings(shards, self.address, None, **options)

    def open(self):
        from facesearch.index.milvus.gallery import MilvusIndex

        return MilvusIndex.open(self.address)

    def close(self) -> None:
        if self.address.lite:
            return  # the tmp folder goes with the test
        from facesearch.index.milvus.engine import connect, disconnect, drop_collections

        client = connect(self.address, os.environ.get("FACESEARCH_MILVUS_TOKEN"))
        drop_collections(client, self.address)
        disconnect(client, self.address)


def unique_collection(prefix: str = "t") -> str:
    return f"{prefix}_{os.getpid()}_{next(_numbers)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lite_server(data_dir: Path, timeout: float = 60.0) -> tuple[subprocess.Popen, int]:
    """`milvus-lite server` on a free loopback port, answering (pymilvus connects) before this returns."""
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    port = free_port()
    exe = Path(sys.executable).with_name("milvus-lite")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "milvus_lite"]
    proc = subprocess.Popen([*command, "server", "--data-dir", str(data_dir), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"milvus-lite server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            MilvusClient(uri=f"http://127.0.0.1:{port}", timeout=2).close()
            return proc, port
        except MilvusException:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"milvus-lite server did not answer on port {port} within {timeout:.0f} s")
