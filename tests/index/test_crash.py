"""Crash safety of every write step, and readers during writes.

Each step of a commit (segment files, tombstone file, metadata transaction, manifest swap,
clean-up) and of a compaction is interrupted twice: by an exception in the process, and by the
process dying on the spot (`os._exit` in a subprocess: no `finally`, no clean-up, an open SQLite
transaction). Afterwards the index must answer exactly as before (or, past the swap, exactly as
after), its vectors must match its live metadata rows, and the next write must succeed and
remove the leftovers.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from index_fakes import PixelEmbedder, write_photo

import facesearch.index.storage.generation
import facesearch.index.storage.merging  # noqa: F401 - patched by name through sys.modules
import facesearch.index.storage.writer  # noqa: F401
from facesearch.index import GalleryIndex, build_index, open_writer
from facesearch.index.storage.merging import merge_segments
from facesearch.index.storage.store import StoreWrite

QUERY = np.random.default_rng(99).standard_normal((4, 16)).astype(np.float32)
QUERY /= np.linalg.norm(QUERY, axis=1, keepdims=True)

# The step to interrupt -> (module attribute patched, what the crashing run does).
STEPS = {
    "segment write": ("facesearch.index.storage.writer.write_segment", "build"),
    "tombstone write": ("facesearch.index.storage.writer.write_ids", "build"),
    "metadata update": ("facesearch.index.storage.store.StoreWrite.add_faces", "build"),
    "manifest swap": ("facesearch.index.storage.generation.atomic_write_json", "build"),
    "compaction segment": ("facesearch.index.storage.merging.write_segment", "compact"),
    "compaction swap": ("facesearch.index.storage.generation.atomic_write_json", "compact"),
    # The same merge built beside the writers (merging.merge_segments: what a server and `compact` run).
    "concurrent merge segment": ("facesearch.index.storage.merging.write_segment", "merge"),
    "concurrent merge swap": ("facesearch.index.storage.generation.atomic_write_json", "merge"),
}


def snapshot(index_dir: Path) -> tuple:
    """Everything a reader sees: generation, every live record and vector, search results."""
    with GalleryIndex.open(index_dir) as g:
        ids = g.ids()
        assert len(ids) == len(g) == g.store.count_faces()  # vectors = live metadata rows
        scores, found = g.search(QUERY, 5)
        return (g.manifest.generation, g.records(ids), g.vectors(ids).tolist(), scores.tolist(), found.tolist())


def contents(index_dir: Path) -> tuple:
    """What the index holds, whatever its segment layout: records, vectors, search results."""
    return snapshot(index_dir)[1:]


@pytest.fixture
def index_dir(tmp_path, gallery, model_dir, rng) -> Path:
    """An index of 3 segments with tombstones, and a gallery folder with pending changes."""
    idx = tmp_path / "idx"
    build_index(gallery, idx, PixelEmbedder(model_dir))
    write_photo(gallery / "bob" / "second.png", rng)
    build_index(gallery, idx, PixelEmbedder(model_dir))
    write_photo(gallery / "carol" / "third.png", rng)
    (gallery / "alice" / "001.png").unlink()
    build_index(gallery, idx, PixelEmbedder(model_dir))
    # pending: one new photo, one removed
    write_photo(gallery / "bob" / "late.png", rng)
    (gallery / "alice" / "000.png").unlink()
    return idx


def _crash(*args, **kwargs):
    raise RuntimeError("simulated crash")


def _run_step(action: str, gallery: Path, idx: Path, model_dir: Path):
    if action == "build":
        return build_index(gallery, idx, PixelEmbedder(model_dir))
    if action == "merge":
        return merge_segments(idx, everything=True, force=True)
    with open_writer(idx, card=PixelEmbedder(model_dir).card, model_dir=model_dir) as w:
        return w.compact(force=True)


def _check_recovers(gallery: Path, idx: Path, model_dir: Path, expected_after: tuple) -> None:
    report = build_index(gallery, idx, PixelEmbedder(model_dir))
    with open_writer(idx, card=PixelEmbedder(model_dir).card, model_dir=model_dir) as w:
        w.compact(force=True)
    assert contents(idx) == expected_after
    with GalleryIndex.open(idx) as g:
        named = g.manifest.files | {"manifest.json", "model_card.json", ".lock", ".merge.lock"}
    sides = {f"{g.manifest.metadata_file}-wal", f"{g.manifest.metadata_file}-shm"}
    assert set(os.listdir(idx)) - sides == named, "leftovers of the crash were not removed"
    assert report.vectors == len(expected_after[0])


def _expected_after(tmp_path: Path, gallery: Path, idx: Path, model_dir: Path) -> tuple:
    """The contents an uninterrupted update + compaction gives, on a copy."""
    import shutil

    copy = tmp_path / "reference"
    shutil.copytree(idx, copy)
    build_index(gallery, copy, PixelEmbedder(model_dir))
    with open_writer(copy, card=PixelEmbedder(model_dir).card, model_dir=model_dir) as w:
        w.compact(force=True)
    return contents(copy)


@pytest.mark.parametrize("step", STEPS)
def test_exception_at_each_step_leaves_the_previous_state(tmp_path, gallery, model_dir, index_dir, monkeypatch, step):
    target, action = STEPS[step]
    if action in ("compact", "merge"):  # compaction runs on the committed update
        build_index(gallery, index_dir, PixelEmbedder(model_dir))
    before = snapshot(index_dir)
    after = _expected_after(tmp_path, gallery, index_dir, model_dir)
    module, name = target.rsplit(".", 1)
    owner = StoreWrite if module == "facesearch.index.storage.store.StoreWrite" else sys.modules[module]
    with monkeypatch.context() as m:
        m.setattr(owner, name, _crash)
        with pytest.raises(RuntimeError, match="simulated crash"):
            _run_step(action, gallery, index_dir, model_dir)
    assert snapshot(index_dir) == before
    _check_recovers(gallery, index_dir, model_dir, after)


CRASH_SCRIPT = """
import os, sys
import facesearch.index.storage.generation, facesearch.index.storage.writer, facesearch.index.storage.store
import facesearch.index.storage.merging
from index_fakes import PixelEmbedder
from facesearch.index import build_index, open_writer
target, action, gallery, idx, model_dir = sys.argv[1:6]
module, name = target.rsplit(".", 1)
owner = facesearch.index.storage.store.StoreWrite if module == "facesearch.index.storage.store.StoreWrite" else sys.modules[module]
real = getattr(owner, name)
def die(*args, **kwargs):
    if name == "add_faces":  # die in the middle of the transaction, with rows already written
        real(*args, **kwargs)
    os._exit(3)
setattr(owner, name, die)
if action == "build":
    build_index(gallery, idx, PixelEmbedder(model_dir))
elif action == "merge":
    from facesearch.index.storage.merging import merge_segments
    merge_segments(idx, everything=True, force=True)
else:
    with open_writer(idx, card=PixelEmbedder(model_dir).card, model_dir=model_dir) as w:
        w.compact(force=True)
os._exit(0)
"""


@pytest.mark.parametrize("step", [*STEPS, "after the swap"])
def test_killed_process_at_each_step(tmp_path, gallery, model_dir, index_dir, step):
    """A real crash: the writing process dies on the spot at each step (kill -9 has the same effect)."""
    target, action = STEPS.get(step, ("facesearch.index.storage.generation.remove_stale", "build"))
    if action in ("compact", "merge"):
        build_index(gallery, index_dir, PixelEmbedder(model_dir))
    before = snapshot(index_dir)
    after = _expected_after(tmp_path, gallery, index_dir, model_dir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, target, action, str(gallery), str(index_dir),
                           str(model_dir)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    if step == "after the swap":  # the new generation is committed: readers see it, consistent
        assert snapshot(index_dir)[0] == before[0] + 1
    else:
        assert snapshot(index_dir) == before
    _check_recovers(gallery, index_dir, model_dir, after)


def test_queries_answer_from_the_last_commit_during_compaction(gallery, model_dir, index_dir):
    build_index(gallery, index_dir, PixelEmbedder(model_dir))
    expected = contents(index_dir)
    held = GalleryIndex.open(index_dir)  # a reader opened before the writes
    seen, errors, done = [], [], threading.Event()

    def reader():
        try:
            while not done.is_set():
                with GalleryIndex.open(index_dir) as g:
                    ids = g.ids()
                    seen.append(g.manifest.generation)
                    scores, found = g.search(QUERY, 5)
                    if (g.records(ids), g.vectors(ids).tolist(), scores.tolist(), found.tolist()) != expected:
                        errors.append(f"generation {g.manifest.generation} answered differently")
        except Exception as e:  # noqa: BLE001 - any failure of a reader fails the test below
            errors.append(repr(e))

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    with open_writer(index_dir, card=PixelEmbedder(model_dir).card, model_dir=model_dir) as w:
        for _ in range(4):
            w.compact(force=True)
    done.set()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert len(set(seen)) > 1, "the readers never saw a compaction happen"
    # the reader opened before still answers from its own generation, after its files were removed
    ids = held.ids()
    assert (held.records(ids), held.vectors(ids).tolist(), *map(np.ndarray.tolist, held.search(QUERY, 5))) == expected
    held.close()
