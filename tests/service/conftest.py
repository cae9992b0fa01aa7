"""Fixtures of the service tests: the default model, real faces, a small index, servers on 127.0.0.1.

Real photos on every machine: scikit-image's `astronaut` (Eileen Collins) and `camera` (the
cameraman), and variants of them. The default model is the installed one, or installed once
into a session cache (the conversion needs the [train] extra, as `make test` installs).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# pytest runs with --import-mode=importlib, which puts no test folder on sys.path.
sys.path.insert(0, str(Path(__file__).parent))

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the photos: pip install scikit-image")
pytest.importorskip("fastapi", reason="the service needs the [serve] extra: pip install -e '.[serve]'")

from servers import ThreadServer  # noqa: E402


@pytest.fixture(scope="session")
def default_model(tmp_path_factory) -> Path:
    """The default model's folder (dlib-resnet-v1)."""
    from facesearch.embedder.dlib.models import installed_model_dir

    if (installed := installed_model_dir()) is not None:
        return installed
    from typer.testing import CliRunner

    from facesearch.cli.main import app

    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACESEARCH_CACHE", str(cache))
        result = CliRunner().invoke(app, ["models", "install", "dlib-resnet"])
        assert result.exit_code == 0, result.output
        folder = installed_model_dir()
    return folder


@pytest.fixture(scope="session")
def embedder(default_model):
    """One Embedder for every in-process server (the model loads once per session)."""
    from facesearch.embedder.runtime import Embedder

    return Embedder(default_model)


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """astronaut.jpg, astronaut_flip.jpg (same person, mirrored), camera.png, group.jpg (both, side by side),
    no_face.png (coffee cup), big.png (4000 x 3000, for the pixel limit)."""
    root = tmp_path_factory.mktemp("photos")
    astronaut = skimage_data.astronaut()
    camera = np.repeat(skimage_data.camera()[..., None], 3, axis=2)
    Image.fromarray(astronaut).save(root / "astronaut.jpg", quality=92)
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(root / "astronaut_flip.jpg", quality=92)
    Image.fromarray(camera).save(root / "camera.png")
    Image.fromarray(np.concatenate([astronaut, camera], axis=1)).save(root / "group.jpg", quality=92)
    Image.fromarray(skimage_data.coffee()).save(root / "no_face.png")
    Image.new("L", (4000, 3000)).save(root / "big.png")
    return root


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

