"""Files derived once from installed sources (a parsed predictor, built ONNX graphs), kept in the user cache.

Every process of facesearch (a `query`, each worker of a build) needs the same few things made from
files it did not write: parsing or building them costs more than a whole query otherwise does. So the
result is written once to `<cache>/derived/<kind>-<key>` and later processes read it. The key is the
source file's sha256 (with the deriving code's format version): a changed source, or changed code,
names another file, so a stale result is never read. Writes are atomic, so a reader never sees half a
file; a cache that cannot be written (read-only home) costs speed, never correctness.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from facesearch.embedder.core.atomic import atomic_write_bytes
from facesearch.embedder.core.environment import cache_dir

T = TypeVar("T")
DERIVED_DIR = "derived"


def derived_path(kind: str, key: str, suffix: str = "") -> Path:
    """Where the file derived as `kind` from a source with `key` (a sha256, or another digest) lives."""
    return cache_dir() / DERIVED_DIR / f"{kind}-{key[:24]}{suffix}"


def load_derived(kind: str, key: str, build: Callable[[], bytes], load: Callable[[bytes], T], *,
                 suffix: str = "") -> T:
    """`load(bytes)` of the derived file, building and caching it first when it is missing or unreadable.

    Args:
        kind: what is derived and its format version, e.g. "shape-predictor-5-v1".
        key: identifies the source content: its sha256 (hex).
        build: makes the file's bytes from the source (the slow step, run once per key).
        load: turns the bytes into the object; an exception from it on a cached file (damaged on
            disk) means the file is built again.
        suffix: file-name ending, e.g. ".onnx".

    Returns:
        What `load` returns.
    """
    path = derived_path(kind, key, suffix)
    with contextlib.suppress(OSError):
        data = path.read_bytes()
        try:
            return load(data)
        except Exception:  # a damaged cache file is rebuilt, whatever the parser raised
            pass
    data = build()
    value = load(data)  # a bad build raises here, before anything is written
    with contextlib.suppress(OSError):  # no writable cache: this process keeps what it built
        atomic_write_bytes(path, data)
    return value
