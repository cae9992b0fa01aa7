"""Fixtures every test package shares."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

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
        env = os.environ | {"PYTHONPATH": str(poison)}  # read now: other fixtures may have set variables
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)

    return run
