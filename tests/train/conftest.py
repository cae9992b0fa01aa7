"""Fixtures for the train/ tests: quiet TensorFlow, synthetic faces made once per session."""

import os

# Before anything imports TensorFlow: its C++ start-up chatter buries pytest's output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from facesearch.train.synthetic import make_synthetic_faces  # noqa: E402

IDENTITIES = 20
TRAIN_PER_IDENTITY = 30
QUERY_PER_IDENTITY = 10


@pytest.fixture(scope="session")
def synthetic_faces(tmp_path_factory):
    """`(train_dir, query_dir)`: 20 identities, 30 training and 10 disjoint held-out images each."""
    root = tmp_path_factory.mktemp("synthetic")
    make_synthetic_faces(root / "train", IDENTITIES, TRAIN_PER_IDENTITY, seed=0)
    make_synthetic_faces(root / "query", IDENTITIES, QUERY_PER_IDENTITY, seed=0, start=TRAIN_PER_IDENTITY)
    return root / "train", root / "query"
