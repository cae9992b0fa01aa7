"""Fixtures of the service tests: a small index of real faces, servers on 127.0.0.1.

The default model and the real photos (`default_model`, `photos`) are tests/conftest.py's.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

# pytest runs with --import-mode=importlib, which puts no test folder on sys.path.
sys.path.insert(0, str(Path(__file__).parent))

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the photos: pip install scikit-image")
pytest.importorskip("fastapi", reason="the service needs the [serve] extra: pip install -e '.[serve]'")

from servers import ThreadServer  # noqa: E402


@pytest.fixture(scope="session")
def embedder(default_model):
    """One Embedder for every in-process server (the model loads once per session)."""
    from facesearch.embedder.runtime import Embedder

    return Embedder(default_model)


@pytest.fixture(scope="session")
def gallery(photos, tmp_path_factory) -> Path:
    """A gallery folder: eileen/astronaut.jpg, cameraman/camera.png."""
    root = tmp_path_factory.mktemp("gallery")
    (root / "eileen").mkdir()
    (root / "cameraman").mkdir()
    shutil.copy(photos / "astronaut.jpg", root / "eileen" / "astronaut.jpg")
    shutil.copy(photos / "camera.png", root / "cameraman" / "camera.png")
    return root


@pytest.fixture(scope="session")
def built_index(gallery, embedder, tmp_path_factory) -> Path:
    from facesearch.index import build_index

    idx = tmp_path_factory.mktemp("built") / "idx"
    build_index(gallery, idx, embedder)
    return idx


@pytest.fixture
def index_dir(built_index, tmp_path) -> Path:
    """A fresh copy of the built index (eileen, cameraman) for one test."""
    target = tmp_path / "idx"
    shutil.copytree(built_index, target, ignore=shutil.ignore_patterns(".lock"))
    return target


@pytest.fixture
def config(index_dir, default_model):
    from facesearch.service import ServiceConfig

    return ServiceConfig(index_dir=str(index_dir), model_dir=str(default_model), write_wait=10.0,
                         reload_interval=0.2)


@pytest.fixture
def server(config, embedder):
    """A real uvicorn on 127.0.0.1 in a thread, over a fresh index copy; yields a `ThreadServer`."""
    with ThreadServer(config, embedder) as s:
        yield s

