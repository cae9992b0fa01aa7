"""The committed generation requests answer from, swapped for a newer one while requests go on.

Each request takes the current `GalleryIndex` (a snapshot of one committed generation) for its
whole life; a newer generation (a commit of this service, of another worker process, or of a
CLI `build-index`) is opened beside it with the unchanged segments taken over, becomes current
for the requests that start after, and the old one is closed when its last request ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from facesearch.embedder.core.errors import FaceSearchError
from facesearch.index.storage.gallery import GalleryIndex
from facesearch.index.storage.manifest import MANIFEST_FILE

log = logging.getLogger("facesearch.service")


class Snapshots:
    """The current gallery snapshot, reference-counted per request.

    Args:
        gallery: the snapshot to start from.
        check: called on every newer snapshot before it becomes current; raising
            `FaceSearchError` keeps the old one (e.g. the index was rebuilt with another model)
            and records the message in `problem`.
    """

    def __init__(self, gallery: GalleryIndex, check: Callable[[GalleryIndex], None] | None = None):
        self._current = gallery
        self._check = check
        self._users: dict[GalleryIndex, int] = {}
        self._lock = threading.Lock()  # guards _current and _users
        self._reload = threading.Lock()  # one reopen at a time
        self._manifest = gallery.index_dir / MANIFEST_FILE
        self._stamp = _stamp(self._manifest)
        self.problem: str | None = None  # why a newer generation on disk is not being answered from

    @property
    def current(self) -> GalleryIndex:
        """The snapshot new requests get (use `use()` to keep it open while working with it)."""
        return self._current

    @contextlib.contextmanager
    def use(self) -> Iterator[GalleryIndex]:
        """The current snapshot, kept open until the block ends (picks up a newer generation first)."""
        self.refresh(wait=False)
        with self._lock:
            gallery = self._current
            self._users[gallery] = self._users.get(gallery, 0) + 1
        try:
            yield gallery
        finally:
            with self._lock:
                self._users[gallery] -= 1
                retire = self._users[gallery] == 0 and gallery is not self._current
                if self._users[gallery] == 0:
                    del self._users[gallery]
            if retire:
                gallery.close()

    def refresh(self, force: bool = False, wait: bool = True) -> bool:
        """Make the newest committed generation current if the manifest changed; True if it did.

        The check is one `stat` of manifest.json (a commit replaces it: a new inode), so every
        request can afford it. With `wait=False` a request does not wait for a reopen another
        thread is doing: it answers from the current snapshot.
        """
        if not force and _stamp(self._manifest) == self._stamp:
            return False
        if not self._reload.acquire(blocking=wait):
            return False
        try:
            stamp = _stamp(self._manifest)
            if not force and stamp == self._stamp:
                return False
            try:
                newer = self._current.reopen_if_changed()
                if newer is not self._current and self._check is not None:
                    try:
                        self._check(newer)
                    except BaseException:
                        newer.close()
                        raise
            except FaceSearchError as e:
                if self.problem != str(e):
                    log.error("not answering from the index's new generation: %s", e)
                self.problem = str(e)
                self._stamp = stamp  # do not retry on every request; the next commit tries again
                return False
            self.problem = None
            self._stamp = stamp
            if newer is self._current:
                return False
            with self._lock:
                old, self._current = self._current, newer
                idle = old not in self._users
            if idle:
                old.close()
            log.info("answering from generation %d (%d faces, %d identities)", newer.manifest.generation,
                     newer.manifest.faces, newer.manifest.identities)
            return True
        finally:
            self._reload.release()

    def close(self) -> None:
        with self._lock:
            galleries = {self._current, *self._users}
        for gallery in galleries:
            gallery.close()


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size
