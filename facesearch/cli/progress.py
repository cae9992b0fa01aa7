"""Progress on stderr, so stdout stays clean for results and --json.

On a terminal: a rich bar per phase with a known total and an ETA. Elsewhere (logs, CI,
pipes): a plain line at every tenth of the work, so long runs still show they are alive.
"""

from __future__ import annotations

import sys
import time

_LABELS = {"hash": "checking changed files", "embed": "embedding faces", "ingest": "reading embeddings"}


class PhaseProgress:
    """The `facesearch.index.protocols.Progress` callback, drawn on stderr. Use as a context manager."""

    def __init__(self, enabled: bool = True):
        self._enabled = enabled
        self._rich = None
        self._tasks: dict[str, int] = {}
        self._lines: dict[str, tuple[float, float]] = {}  # phase -> (start time, next tenth to report)

    def __enter__(self) -> PhaseProgress:
        if self._enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._rich = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                  console=Console(stderr=True))
            self._rich.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.stop()

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self._enabled:
            return
        label = _LABELS.get(phase, phase)
        if self._rich is not None:
            if phase not in self._tasks:
                self._tasks[phase] = self._rich.add_task(label, total=total)
            self._rich.update(self._tasks[phase], completed=done, total=total)
            return
        start, next_tenth = self._lines.setdefault(phase, (time.perf_counter(), 0.1))
        if total and done / total >= next_tenth - 1e-9:
            rate = done / max(time.perf_counter() - start, 1e-9)
            print(f"{label}: {done}/{total} ({rate:.1f}/s)", file=sys.stderr, flush=True)
            while done / total >= next_tenth - 1e-9:
                next_tenth += 0.1
            self._lines[phase] = (start, next_tenth)
