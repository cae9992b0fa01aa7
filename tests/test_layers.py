"""The import contracts in pyproject.toml name modules one by one: every module must be in them.

import-linter checks the contracts (`make lint`); this checks that a new module of `embedder`
was placed in them on purpose, rather than left outside the rules by being new.
"""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

import facesearch.embedder as embedder

ROOT = Path(__file__).resolve().parents[1]
TRAINING_SIDE = {"facesearch.embedder.export", "facesearch.embedder.dlib.install", "facesearch.embedder.dlib.keras_net"}


def _contract(name: str) -> dict:
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (found,) = [c for c in contracts if c["name"].startswith(name)]
    return found


def _children(package: str, path) -> set[str]:
    return {f"{package}.{m.name}" for m in pkgutil.iter_modules(path)}


def test_the_leaf_contract_names_every_other_part_of_embedder():
    leaf = _contract("the shared leaf")
    parts = _children("facesearch.embedder", embedder.__path__) - {"facesearch.embedder.core"}
    assert parts <= set(leaf["forbidden_modules"]), parts - set(leaf["forbidden_modules"])


def test_every_run_time_module_is_under_the_run_time_contract():
    import facesearch.embedder.dlib

    runtime = _contract("the run-time path")
    sources = set(runtime["source_modules"])
    parts = (_children("facesearch.embedder", embedder.__path__) - {"facesearch.embedder.core", "facesearch.embedder.dlib"}) \
        | _children("facesearch.embedder.dlib", facesearch.embedder.dlib.__path__)
    unplaced = {p for p in parts - TRAINING_SIDE if p not in sources}
    assert not unplaced, f"add these to the run-time contract (or to TRAINING_SIDE, with a reason): {unplaced}"
    assert TRAINING_SIDE <= set(runtime["forbidden_modules"])
    assert "facesearch.index" in sources
