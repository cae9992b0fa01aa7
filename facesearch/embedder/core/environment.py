"""Settings taken from the environment, read at call time (never at import time)."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_INDEX_NAME = "facesearch-index"


def cache_dir() -> Path:
    """facesearch's cache: $FACESEARCH_CACHE, else $XDG_CACHE_HOME/facesearch, else ~/.cache/facesearch."""
    if os.environ.get("FACESEARCH_CACHE"):
        return Path(os.environ["FACESEARCH_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "facesearch"


def default_index_dir() -> Path:
    """$FACESEARCH_INDEX, else ./facesearch-index."""
    return Path(os.environ.get("FACESEARCH_INDEX") or DEFAULT_INDEX_NAME)


def model_from_environment() -> Path | None:
    """$FACESEARCH_MODEL, when set."""
    value = os.environ.get("FACESEARCH_MODEL")
    return Path(value) if value else None


def lfw_from_environment() -> Path | None:
    """$FACESEARCH_LFW, when set."""
    value = os.environ.get("FACESEARCH_LFW")
    return Path(value) if value else None
