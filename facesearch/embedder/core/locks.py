"""An exclusive advisory lock on a file, waited for with a deadline (fcntl; none on Windows)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive_lock(path: Path, wait: float, on_busy: Callable[[], Exception],
                   on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) for the body of the `with`.

    The kernel drops the lock when its process dies, so a killed holder never leaves it held.

    Args:
        path: the lock file; its folder must exist.
        wait: seconds to wait for another holder before giving up.
        on_busy: makes the exception raised when `wait` runs out.
        on_wait: called once, when the lock is held by someone else and waiting begins.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks
        yield
        return
    deadline = time.monotonic() + wait
    with open(path, "a+b") as f:
        waited = False
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise on_busy() from None
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
