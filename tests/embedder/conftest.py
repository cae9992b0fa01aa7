"""Shared settings and fixtures of the embedder tests."""

import os
import sys
from pathlib import Path

import pytest

# TensorFlow logs a page of C++ notices on import; keep test output readable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The project runs pytest with --import-mode=importlib, which puts no test folder on sys.path;
# the test modules here share the helpers in dlib_fixtures.py.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def installed_default_model(tmp_path_factory):
    """(cache folder, CLI result) after `facesearch models install dlib-resnet` into a fresh cache.

    The one slow step of the default model's tests (~15-30 s), done once per session.
    """
    from dlib_fixtures import weights_file
    from typer.testing import CliRunner

    from facesearch.cli.main import app

    weights_file()
    root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FACESEARCH_CACHE", str(root))
        result = CliRunner().invoke(app, ["models", "install", "dlib-resnet"])
    assert result.exit_code == 0, result.output
    return root, result
