"""Crash-safe commits of an index directory: new files first, then one atomic manifest swap.

Order of a write (see `facesearch.index.storage.writer`): new segment and tombstone files are written and fsynced
under names no manifest refers to, and the metadata rows of the new generation are committed
(invisible to readers of the current one); then `manifest.json` is replaced atomically; only
then are files that the new manifest does not name deleted. A crash at any point leaves a
loadable, consistent index: the old one before the swap, the new one after it; leftovers are
removed (and uncommitted metadata rows rolled back) by the next write.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from facesearch.embedder.core.atomic import atomic_write_json, fsync_dir, make_dirs
from facesearch.embedder.core.errors import IndexBusyError
from facesearch.embedder.core.model_card import CARD_FILE
from facesearch.index.storage.manifest import MANIFEST_FILE, Manifest

LOCK_FILE = ".lock"  # the write lock: held by a writer, and by a merge or calibration only to commit
MERGE_LOCK_FILE = ".merge.lock"  # held by the one merge (or compaction) being built at a time
MERGING_DIR = ".merging"  # where the merge lock's holder builds a merged segment (storage.merging)
CALIBRATION_LOCK_FILE = ".calibration.lock"  # held by the one calibration computed outside the write lock
# Called with (lock file name, "acquired" | "released") by every lock of this module, in the thread that
# takes it: how tests see how long, and around what, the write lock is held (not a wall-clock guess).
LOCK_OBSERVERS: list[Callable[[str, str], None]] = []
# Files this package creates and may delete: segment and tombstone files, atomic-write temporaries,
# and the generation files of the old format (gone once an index is upgraded).
_OURS = re.compile(r"^(seg-\d{6,}\.(vectors\.npy|ids\.npy|ann)|tomb-\d{6,}\.npy|meta-\d{6,}\.sqlite(-wal|-shm)?"
                   r"|gen-\d{6,}\.(faiss|sqlite)(-journal|-wal|-shm)?|\.(manifest|model_card)\.json\..*\.tmp"
                   r"|\.seg-\d{6,}\..*\.tmp)$")


def commit(index_dir: Path, manifest: Manifest) -> None:
    """Make `manifest` current: swap `manifest.json`, refresh the model card copy, clean up.

    The files `manifest` names must already be complete and synced; their directory entries are
    made durable here, before the manifest that names them.
    """
    fsync_dir(index_dir)
    atomic_write_json(index_dir / MANIFEST_FILE, manifest.to_dict())
    # A convenience copy for `ModelCard.load(index_dir)`; the manifest's card is authoritative.
    atomic_write_json(index_dir / CARD_FILE, manifest.model_card.to_dict())
    remove_stale(index_dir, manifest)


def remove_stale(index_dir: Path, manifest: Manifest | None) -> list[str]:
    """Delete our files that `manifest` does not name (older generations, crash leftovers).

    Readers that still use an older generation keep working: their files are open (or mapped),
    and unlinking an open file on POSIX leaves it readable until it is closed.
    """
    keep = manifest.files if manifest is not None else set()
    if manifest is not None:  # the metadata file's SQLite side files live as long as it does
        keep |= {manifest.metadata_file + "-wal", manifest.metadata_file + "-shm"}
    removed = []
    for entry in os.scandir(index_dir):
        if entry.is_file() and _OURS.match(entry.name) and entry.name not in keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                removed.append(entry.name)
    if os.path.isdir(index_dir / MERGING_DIR):  # a crashed merge's segment; none is being built if the lock is free
        with contextlib.suppress(IndexBusyError), maintenance_lock(index_dir, MERGE_LOCK_FILE):
            shutil.rmtree(index_dir / MERGING_DIR, ignore_errors=True)
            removed.append(MERGING_DIR)
    return sorted(removed)


@contextlib.contextmanager
def build_lock(index_dir: Path, wait: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on `index_dir` so that two writers never interleave.

    Readers take no lock: they only read files named by a complete manifest, and metadata rows
    of the generation that manifest names.

    Args:
        index_dir: the index directory (created if missing).
        wait: seconds to wait for another writer to finish before giving up.

    Raises:
        IndexBusyError: another writer holds the lock (after `wait` seconds).
    """
    with _flock(index_dir, LOCK_FILE, wait, f"another build is writing the index '{index_dir}'; wait for it to "
                                            "finish and run again"):
        yield


@contextlib.contextmanager
def maintenance_lock(index_dir: Path, name: str, wait: float = 0.0) -> Iterator[None]:
    """Hold the lock of one kind of maintenance (`MERGE_LOCK_FILE`, `CALIBRATION_LOCK_FILE`) on `index_dir`.

    Maintenance is built outside the write lock, so two merges (a service's, a `facesearch compact`)
    must exclude each other by this lock instead. Always taken before the write lock, never while
    holding it (a writer that merges in place only tries it, `wait=0`), so the two cannot deadlock.

    Raises:
        IndexBusyError: another process (or thread) holds it (after `wait` seconds).
    """
    what = "merge" if name == MERGE_LOCK_FILE else "calibration"
    with _flock(index_dir, name, wait, f"another {what} of the index '{index_dir}' is running; wait for it to "
                                       "finish and run again"):
        yield


@contextlib.contextmanager
def _flock(index_dir: Path, name: str, wait: float, busy: str) -> Iterator[None]:
    make_dirs(index_dir)  # a new index's folder is durable in its parent before anything is committed in it
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; concurrent builds are the user's problem
        yield
        return
    deadline = time.monotonic() + wait
    # flock locks belong to an open file: two threads of one process exclude each other too.
    with open(index_dir / name, "a+b") as f:
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise IndexBusyError(busy) from None
                time.sleep(0.02)
        for observe in LOCK_OBSERVERS:
            observe(name, "acquired")
        try:
            yield
        finally:
            for observe in LOCK_OBSERVERS:
                observe(name, "released")
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
