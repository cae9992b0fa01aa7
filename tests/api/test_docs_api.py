"""Every Python block of docs/api.md runs, in order, in a folder laid out as the page says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_api_page_has_examples():
    assert len(python_blocks(DOC.read_text())) >= 3


def test_every_example_on_the_api_page_runs(workdir):
    for n, block in enumerate(python_blocks(DOC.read_text()), 1):
        # A fresh interpreter per block, as a reader would paste it: nothing carries over but the files.
        proc = subprocess.run([sys.executable, "-c", block], cwd=workdir, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"block {n} of {DOC.name} failed:\n{block}\n{proc.stderr[-3000:]}"
    assert (workdir / "people-index" / "manifest.json").is_file()
