"""Crash-safe saves of an index directory: new generation files, then one atomic manifest swap.

Order of a save (see `commit`): the new generation's files are written and fsynced under names
no manifest refers to; `manifest.json` is replaced atomically; only then are files that the
new manifest does not name deleted. A crash at any point leaves a loadable index: the old one
before the swap, the new one after it; leftovers are removed by the next save.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import faiss

from embedder.core.atomic import atomic_write_json
from embedder.core.errors import FaceSearchError
from embedder.core.model_card import CARD_FILE
from index.manifest import MANIFEST_FILE, Manifest

LOCK_FILE = ".lock"
# Files this package creates: generation files (and SQLite side files), atomic-write temporaries.
_OURS = re.compile(r"^(gen-\d{6,}\.(faiss|sqlite)(-journal|-wal|-shm)?|\.(manifest|model_card)\.json\..*\.tmp)$")


def generation_names(generation: int) -> tuple[str, str]:
    """File names (vectors, metadata) of a generation."""
    return f"gen-{generation:06d}.faiss", f"gen-{generation:06d}.sqlite"


def write_vectors(index: faiss.Index, path: Path) -> None:
    """Write a FAISS index to `path` and fsync it."""
    path.unlink(missing_ok=True)
    faiss.write_index(index, str(path))
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def commit(index_dir: Path, manifest: Manifest) -> None:
    """Make `manifest` current: swap `manifest.json`, refresh the model card copy, clean up.

    The files `manifest` names must already be complete and synced.
    """
    atomic_write_json(index_dir / MANIFEST_FILE, manifest.to_dict())
    # A convenience copy for `ModelCard.load(index_dir)`; the manifest's card is authoritative.
    atomic_write_json(index_dir / CARD_FILE, manifest.model_card.to_dict())
    remove_stale(index_dir, manifest)


def remove_stale(index_dir: Path, manifest: Manifest | None) -> list[str]:
    """Delete our files that `manifest` does not name (older generations, crash leftovers)."""
    keep = {manifest.vectors_file, manifest.metadata_file} if manifest is not None else set()
    removed = []
    for entry in os.scandir(index_dir):
        if entry.is_file() and _OURS.match(entry.name) and entry.name not in keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(entry.name)
    return sorted(removed)


@contextlib.contextmanager
def build_lock(index_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on `index_dir` so that two builds never interleave.

    Readers take no lock: they only read files named by a complete manifest.
    """
    index_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent builds are the user's problem
        yield
        return
    with open(index_dir / LOCK_FILE, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FaceSearchError(f"another build is writing the index '{index_dir}'; wait for it to "
                                  "finish and run again") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
