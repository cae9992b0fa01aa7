"""The spine, run once per session through the CLI: synthetic faces -> train -> export.

Every CLI test then works against this small but really trained and exported model.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# pytest runs with --import-mode=importlib, which puts no test folder on sys.path.
sys.path.insert(0, str(Path(__file__).parent))

from clitools import ENROLLED, STRANGERS, invoke_json  # noqa: E402

from facesearch.train.synthetic import make_synthetic_faces  # noqa: E402


@pytest.fixture(scope="session")
def faces(tmp_path_factory):
    """Folders of synthetic faces: `train` (30 per identity), `gallery` (3 unseen per identity),
    `probes` (1 more unseen per identity, plus 2 identities that are never enrolled)."""
    root = tmp_path_factory.mktemp("faces")
    make_synthetic_faces(root / "train", ENROLLED, 30)
    make_synthetic_faces(root / "gallery", ENROLLED, 3, start=30)
    make_synthetic_faces(root / "probes", ENROLLED + STRANGERS, 1, start=33)
    return root


@pytest.fixture(scope="session")
def trained_run(faces, tmp_path_factory):
    """`facesearch train` on the synthetic set with the tiny preset: the run folder and its summary."""
    run_dir = tmp_path_factory.mktemp("run")
    summary = invoke_json("train", faces / "train", "--out", run_dir, "--preset", "tiny", "--epochs", "8",
                          "--seed", os.environ.get("FACESEARCH_TEST_SEED", "0"))  # tests/seed_sweep.py sets it
    return run_dir, summary


@pytest.fixture(scope="session")
def model_dir(trained_run, tmp_path_factory):
    """`facesearch export` of the trained run (ONNX + SavedModel)."""
    out = tmp_path_factory.mktemp("export") / "model"
    invoke_json("export", trained_run[0], "--out", out)
    return out


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory):
    """An untrained tiny model with other weights, exported to ONNX only: 'another model'."""
    from facesearch.train.config import get_preset
    from facesearch.train.models import build_views

    root = tmp_path_factory.mktemp("other")
    views = build_views(get_preset("tiny"), num_classes=3)
    views.train_model.save(root / "other.keras")
    invoke_json("export", root / "other.keras", "--out", root / "model", "--no-savedmodel")
    return root / "model"
