"""Fixtures for index tests: a seeded generator, a fake model folder, a small generated gallery."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

# The project runs pytest with --import-mode=importlib, which puts no test folder on sys.path;
# the test modules here share the fakes in index_fakes.py.
sys.path.insert(0, str(Path(__file__).parent))

from index_fakes import PixelEmbedder, make_gallery  # noqa: E402


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
