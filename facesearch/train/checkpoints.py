"""Checkpoint files of a run: their names, the latest one, and the callback that writes and prunes them.

A checkpoint is a full `.keras` training model with its optimizer state. Its name says where in the
input stream it was taken: `epoch-003.keras` after 3 whole epochs, `epoch-003-batch-000120.keras`
after 3 epochs and 120 batches of the 4th (a step checkpoint in mid-epoch). Names sort by that
position, not as text, so both kinds mix in one folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import keras

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"epoch-(\d+)(?:-batch-(\d+))?")


@dataclass(frozen=True, order=True)
class Position:
    """A point in the training stream: `epochs` whole epochs done, then `batch` batches of the next."""

    epochs: int
    batch: int = 0

    def step(self, steps_per_epoch: int) -> int:
        """The batches drawn from the start of the run to this point."""
        return self.epochs * steps_per_epoch + self.batch

    @classmethod
    def at_step(cls, step: int, steps_per_epoch: int) -> Position:
        return cls(*divmod(step, steps_per_epoch))

    @property
    def file_name(self) -> str:
        batch = f"-batch-{self.batch:06d}" if self.batch else ""
        return f"epoch-{self.epochs:03d}{batch}.keras"


def position_of(path: str | os.PathLike) -> Position | None:
    """The stream position a checkpoint file name states, or None for a name of another kind."""
    match = _NAME.fullmatch(Path(path).name.removesuffix(".keras"))
    return Position(int(match.group(1)), int(match.group(2) or 0)) if match else None


def list_checkpoints(run_dir: str | os.PathLike) -> list[tuple[Position, Path]]:
    """A run's checkpoints, oldest (earliest in the stream) first."""
    found = ((position_of(p), p) for p in (Path(run_dir) / CHECKPOINT_DIR).glob("epoch-*.keras"))
    return sorted((pos, p) for pos, p in found if pos is not None)


def latest_checkpoint(run_dir: str | os.PathLike) -> tuple[Position, Path] | None:
    """The checkpoint furthest into the stream, or None if the run has none."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def save_model(model: keras.Model, path: Path) -> Path:
    """Save a `.keras` model atomically (a crash mid-save leaves no half-written checkpoint)."""
    # Keras insists on a .keras suffix, so facesearch.embedder.core.atomic's temp names do not fit; same idea.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class Checkpointer(keras.callbacks.Callback):
    """Save the training model every `every` epochs or optimizer steps; keep the latest `keep` (0: all).

    It counts batches itself from `start_step` (so the count survives several `fit` calls and a
    resume, and is not thrown off by mixed precision's skipped updates).

    Args:
        run_dir: the run folder; files go to `run_dir/checkpoints/`.
        steps_per_epoch: batches in an epoch.
        every: the interval.
        unit: "epochs" or "steps".
        keep: how many checkpoints to keep, the latest; 0 keeps all.
        start_step: batches already drawn before this callback's first batch.
    """

    def __init__(self, run_dir: Path, steps_per_epoch: int, every: int, unit: str, keep: int = 0,
                 start_step: int = 0):
        super().__init__()
        self.run_dir, self.steps_per_epoch = Path(run_dir), steps_per_epoch
        self.every, self.unit, self.keep = every, unit, keep
        self.step = start_step
        self._due_at_epoch_end = False

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.unit == "steps" and self.step % self.every == 0:
            position = Position.at_step(self.step, self.steps_per_epoch)
            if position.batch:
                self._save(position)
            else:  # the epoch's last batch: save after the epoch-end callbacks (a plateau may cut the rate)
                self._due_at_epoch_end = True

    def on_epoch_end(self, epoch, logs=None):
        position = Position.at_step(self.step, self.steps_per_epoch)
        due = self.unit == "epochs" and position.batch == 0 and position.epochs % self.every == 0
        if due or self._due_at_epoch_end:
            self._save(position)
        self._due_at_epoch_end = False

    def _save(self, position: Position) -> None:
        save_model(self.model, self.run_dir / CHECKPOINT_DIR / position.file_name)
        if self.keep:
            for _, old in list_checkpoints(self.run_dir)[:-self.keep]:
                old.unlink(missing_ok=True)
