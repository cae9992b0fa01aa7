"""Worker processes that each build their state once, then map tasks; results come back in task order.

The photo loop's decode -> detect -> align -> embed work holds the GIL for long stretches (numpy
cascades, dlib's tree ensemble), so threads cannot fill a machine's cores; processes can. Each
worker builds its state (the models) once from a picklable recipe (as Ray Data's callable classes
do), the pool keeps at most `window` tasks in flight, so memory stays flat on any number of tasks,
and workers finish in any order while `imap` hands results back in the order of the tasks.
Workers ignore Ctrl-C: the parent decides, and stops the pool; a worker that dies (a crash in a
decoder, the out-of-memory killer) is reported as `WorkerCrashedError` for the task it was given.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

_STATE: Any = None
_RUN: Callable[[Any, Any], Any] | None = None


class WorkerCrashedError(RuntimeError):
    """A worker process died while it held `task` (or another task in flight with it)."""

    def __init__(self, task):
        self.task = task
        super().__init__("a worker process died")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the system tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


class WorkerPool:
    """`workers` processes (spawned: safe with the threads ONNX Runtime and OpenVINO start).

    Args:
        workers: processes.
        make_state: picklable, called once in each worker: its state (e.g. a loaded model).
        run: a module-level function, `run(state, task) -> result`, called in the workers.
    """

    def __init__(self, workers: int, make_state: Callable[[], Any], run: Callable[[Any, Any], Any]):
        self.workers, self._make_state, self._run = workers, make_state, run
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(self._make_state, self._run))

    def restart(self) -> None:
        """A fresh set of workers, after one died (the old pool cannot take tasks any more)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._start()

    def submit(self, task) -> Future:
        """The task's future; if the pool is already broken (a worker died since the last task), a future
        holding that BrokenProcessPool, so that the tasks before it still hand back their results in order."""
        try:
            return self._pool.submit(_call, task)
        except BrokenProcessPool as e:
            broken: Future = Future()
            broken.set_exception(e)
            return broken

    def imap(self, tasks: Iterable, window: int) -> Iterator[Any]:
        """Results of `tasks` in task order, at most `window` in flight.

        Raises:
            WorkerCrashedError: a worker died; `.task` is the first unfinished task, and the pool
                has been restarted (the tasks after it were not started: call `imap` again for them).
        """
        pending: deque[tuple[Any, Future]] = deque()
        tasks = iter(tasks)
        try:
            for task in tasks:
                pending.append((task, self.submit(task)))
                if len(pending) >= window:
                    break
            while pending:
                task, future = pending.popleft()
                try:
                    result = future.result()
                except BrokenProcessPool:
                    self.restart()
                    raise WorkerCrashedError(task) from None
                for nxt in tasks:
                    pending.append((nxt, self.submit(nxt)))
                    break
                yield result
        finally:
            for _, future in pending:
                future.cancel()

    def close(self) -> None:
        """Stop the workers: queued tasks are dropped, running ones finish (a fraction of a second)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _init_worker(make_state: Callable[[], Any], run: Callable[[Any, Any], Any]) -> None:
    global _STATE, _RUN
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops the pool
    _STATE, _RUN = make_state(), run


def _call(task):
    return _RUN(_STATE, task)
