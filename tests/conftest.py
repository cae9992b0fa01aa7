"""Fixtures every test package shares: the poisoned TensorFlow import, the default model, real photos.

Real photos on every machine: scikit-image's `astronaut` (Eileen Collins) and `camera` (the
cameraman), and variants of them. The default model is the installed one, or installed once
into a session cache (the conversion needs only the core dependencies).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def without_tensorflow(tmp_path):
    """Run a command in a fresh process in which importing TensorFlow or Keras fails loudly.

    Modules named `tensorflow` and `keras` that raise on import are put in front of the real
    ones. Call it with `facesearch` arguments (`run("query", img)`) or with `script=` Python code;
    returns the CompletedProcess (text stdout/stderr).
    """
    poison = tmp_path / "no-tensorflow"
    for name in ("tensorflow", "keras"):
        (poison / name).mkdir(parents=True)
        (poison / name / "__init__.py").write_text(f"raise ImportError('{name} was imported')\n")

    def run(*args, script: str | None = None) -> subprocess.CompletedProcess:
        if script is not None:
            command = [sys.executable, "-c", script]
        else:
            exe = shutil.which("facesearch", path=os.path.dirname(sys.executable))
            assert exe, "the facesearch console script is not installed next to this Python"
            command = [exe, *map(str, args)]
        # Read now: other fixtures may have set variables. The poison goes first; a PYTHONPATH already set (a
        # checkout other than the installed one) stays behind it.
        env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(poison), os.environ.get("PYTHONPATH")]))}
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)

    return run


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
def photos(tmp_path_factory) -> Path:
    """astronaut.jpg, astronaut_flip.jpg (same person, mirrored), camera.png, group.jpg (both, side by side),
    no_face.png (coffee cup), big.png (4000 x 3000, for the pixel limit)."""
    import numpy as np
    from PIL import Image

    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the photos: pip install scikit-image")
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
