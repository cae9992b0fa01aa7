"""Fixtures for index tests: a seeded generator, a fake model folder, a small generated gallery."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

# The project runs pytest with --import-mode=importlib, which puts no test folder on sys.path;
# the test modules here share the fakes in index_fakes.py.
sys.path.insert(0, str(Path(__file__).parent))

from index_fakes import PixelEmbedder, make_gallery  # noqa: E402


@pytest.fixture(scope="module")
def one_faiss_thread():
    """FAISS on one thread for a module: HNSW is then built in one insertion order (its graph, and a value
    tuned on it, are reproducible), and no spinning OpenMP thread slows a shared 2-core machine 3x."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    return d


@pytest.fixture
def embedder(model_dir: Path) -> PixelEmbedder:
    return PixelEmbedder(model_dir)


@pytest.fixture
def gallery(tmp_path: Path, rng: np.random.Generator) -> Path:
    """photos/alice (3), photos/bob (2), photos/carol (4)."""
    root = tmp_path / "photos"
    make_gallery(root, {"alice": 3, "bob": 2, "carol": 4}, rng)
    return root


# --- the stores a gallery can live in (stores.py): folder, Milvus Lite, a Milvus server ----------------

from stores import EXTERNAL_ENV, FolderStore, MilvusStore, start_lite_server, unique_collection  # noqa: E402

MILVUS_KINDS = ["milvus-lite", "milvus-server"] + (["milvus-external"] if os.environ.get(EXTERNAL_ENV) else [])


def _need_milvus() -> None:
    pytest.importorskip("pymilvus", reason="the Milvus gallery needs pymilvus: pip install 'facesearch[milvus]'")
    pytest.importorskip("milvus_lite", reason="the Milvus tests run Milvus Lite: pip install 'facesearch[milvus]'")


@pytest.fixture(scope="session")
def lite_server(tmp_path_factory):
    """A `milvus-lite server` on a free loopback port for the session: its `http://127.0.0.1:PORT` base."""
    _need_milvus()
    proc, port = start_lite_server(tmp_path_factory.mktemp("milvus-server"))
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=30)


def _milvus_store(kind: str, tmp_path: Path, request) -> MilvusStore:
    _need_milvus()
    if kind == "milvus-lite":
        return MilvusStore(kind, f"milvus-lite:{tmp_path / 'gallery.db'}#{unique_collection()}")
    if kind == "milvus-server":
        return MilvusStore(kind, f"milvus://{request.getfixturevalue('lite_server')}/{unique_collection()}")
    base = os.environ[EXTERNAL_ENV].rstrip("/")
    return MilvusStore(kind, f"{base.rsplit('/', 1)[0]}/{unique_collection(base.rsplit('/', 1)[1])}")


@pytest.fixture(params=MILVUS_KINDS)
def milvus_store(request, tmp_path):
    """A Milvus gallery (Lite in-process, a local Lite server, or $FACESEARCH_TEST_MILVUS), empty."""
    store = _milvus_store(request.param, tmp_path, request)
    yield store
    store.close()


@pytest.fixture(params=[kind for kind in MILVUS_KINDS if kind != "milvus-server"])
def lite_store(request, tmp_path):
    """A Milvus gallery for tests whose client path is the same on every kind (Milvus Lite in-process, and
    $FACESEARCH_TEST_MILVUS when set): the uri/token path is `milvus_store`'s."""
    store = _milvus_store(request.param, tmp_path, request)
    yield store
    store.close()


@pytest.fixture(params=["folder", *MILVUS_KINDS])
def store(request, tmp_path):
    """Where a test's gallery lives: an index folder, or each kind of Milvus gallery."""
    store = FolderStore(tmp_path) if request.param == "folder" else _milvus_store(request.param, tmp_path, request)
    yield store
    store.close()
