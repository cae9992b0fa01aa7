"""Merges built beside the writers (storage.merging): writes go on during a merge, nothing acknowledged is lost.

The merge is paused inside its segment build (deterministically, by an event) while other threads
enrol and remove; then it swaps in. Afterwards the index must equal an index rebuilt from scratch
of the surviving faces and a numpy brute force over them, with every acknowledged write there and
no removed face back. The write lock's hold is observed through `generation.LOCK_OBSERVERS`: the
merged segment must be built while the merge holds no write lock, and the merge takes it once.
A second test races a separate writing process against a compaction that changes the index type.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_segments import CARD, D, add, answers, assert_same, brute_force

import facesearch.index.storage.merging as merging
from facesearch.embedder.core.errors import IndexBusyError
from facesearch.index import GalleryIndex, open_writer, read_manifest
from facesearch.index.storage.generation import LOCK_FILE, LOCK_OBSERVERS, MERGE_LOCK_FILE, MERGING_DIR
from facesearch.index.storage.manifest import IndexPolicy


def vector(key: str) -> np.ndarray:
    """A unit vector fixed by the key (so a separate process makes the same one)."""
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(D).astype(np.float32)
    return v / np.linalg.norm(v)


@pytest.fixture
def writer_args(tmp_path):
    (tmp_path / "model").mkdir()
    return {"card": CARD, "model_dir": tmp_path / "model"}


@pytest.fixture
def lock_log():
    """(thread name, lock file, event, time) of every lock taken or released in this process."""
    log: list[tuple[str, str, str, float]] = []

    def observe(name: str, event: str) -> None:
        log.append((threading.current_thread().name, name, event, time.perf_counter()))

    LOCK_OBSERVERS.append(observe)
    yield log
    LOCK_OBSERVERS.remove(observe)


def holds(log, thread: str, name: str = LOCK_FILE) -> list[float]:
    """Seconds each hold of lock `name` by `thread` lasted."""
    out, since = [], None
    for who, lock, event, t in log:
        if who == thread and lock == name:
            if event == "acquired":
                since = t
            else:
                out.append(t - since)
    return out


def build_segments(idx: Path, writer_args, live: dict[str, np.ndarray], segments: int, per: int) -> None:
    for s in range(segments):
        batch = {f"s{s}-{i}": vector(f"s{s}-{i}") for i in range(per)}
        with open_writer(idx, **writer_args) as w:
            add(w, batch)
            w.commit(merge=False)
        live.update(batch)


def test_writes_during_a_merge_are_kept_and_the_lock_is_held_only_for_the_swap(tmp_path, writer_args, lock_log,
                                                                               monkeypatch):
    idx = tmp_path / "idx"
    live: dict[str, np.ndarray] = {}
    build_segments(idx, writer_args, live, segments=4, per=40)
    with open_writer(idx, **writer_args) as w:  # some removed before the merge: dropped by it
        w.remove_photos([f"s0-{i}.jpg" for i in range(10)])
        w.commit(merge=False)
    for i in range(10):
        del live[f"s0-{i}"]

    building, go = threading.Event(), threading.Event()
    built_while_holding = []
    real_write = merging.write_segment

    def paused_write(*args, **kwargs):
        held = [e for who, lock, e, _ in lock_log if who == "merger" and lock == LOCK_FILE]
        built_while_holding.append(bool(held) and held[-1] == "acquired")
        building.set()
        assert go.wait(60), "the test never let the merge go on"
        return real_write(*args, **kwargs)

    monkeypatch.setattr(merging, "write_segment", paused_write)
    outcome: dict = {}

    def merger():
        try:
            outcome["result"] = merging.merge_segments(idx, everything=True)
        except BaseException as e:  # noqa: BLE001 - reported by the assertion below
            outcome["error"] = e

    thread = threading.Thread(target=merger, name="merger")
    thread.start()
    assert building.wait(60)
    # While the merge is stopped in the middle of its build: enrolments and removals commit at once.
    with pytest.raises(IndexBusyError, match="another merge"):
        merging.merge_segments(idx, everything=True)  # a second merge (e.g. `facesearch compact`) is refused
    acked_added, acked_removed = {}, []
    for n in range(5):
        batch = {f"late{n}-{i}": vector(f"late{n}-{i}") for i in range(3)}
        gone = [f"s{1 + n % 3}-{n}", f"s3-{20 + n}"] + ([f"late{n - 1}-0"] if n else [])
        with open_writer(idx, **writer_args, wait=5) as w:  # fails (IndexBusyError) if the merge held the lock
            add(w, batch)
            w.remove_photos([f"{key}.jpg" for key in gone])
            w.commit(merge=False)
        acked_added.update(batch)
        acked_removed += gone
    go.set()
    thread.join(60)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.written and not result.obsolete and result.merged == [0, 1, 2, 3]
    assert set(result.seconds) == {"build", "swap"}

    live.update(acked_added)
    for key in acked_removed:
        del live[key]
    assert built_while_holding == [False], "the merged segment was built while holding the write lock"
    swap_holds = holds(lock_log, "merger")
    assert len(swap_holds) == 1, "the merge takes the write lock once, for its swap"
    assert len(holds(lock_log, "merger", MERGE_LOCK_FILE)) == 1

    m = read_manifest(idx)
    assert m.faces == len(live)
    # the 4 merged segments are one now; the 5 committed during the merge are kept as they were
    assert len(m.segments) == 1 + 5 and m.segments[-1].count == 160 - 10
    with GalleryIndex.open(idx) as g:
        paths = sorted(r.path for r in g.records(g.ids()))
        assert paths == sorted(f"{key}.jpg" for key in live), "an acknowledged write is missing or a removed face is back"
        assert g.store.count_faces() == len(g)
    assert not (idx / MERGING_DIR).exists()
    queries = np.stack([vector(f"q{i}") for i in range(12)])
    got = answers(idx, queries, 10)
    assert_same(got, brute_force(live, queries, 10))
    rebuilt = tmp_path / "rebuilt"
    with open_writer(rebuilt, **writer_args) as w:
        add(w, {key: live[key] for key in sorted(live)})
        w.commit()
    assert_same(answers(rebuilt, queries, 10), got)
    print(f"write lock held by the merge for {swap_holds[0] * 1000:.1f} ms")


def test_a_merge_whose_segments_a_rebuild_replaced_is_dropped(tmp_path, writer_args, monkeypatch):
    idx = tmp_path / "idx"
    live: dict[str, np.ndarray] = {}
    build_segments(idx, writer_args, live, segments=2, per=10)
    real_build = merging.build_merge

    def rebuild_meanwhile(*args, **kwargs):
        built = real_build(*args, **kwargs)
        with open_writer(idx, **writer_args, rebuild=True) as w:
            add(w, {"new-0": vector("new-0")})
            w.commit()
        return built

    monkeypatch.setattr(merging, "build_merge", rebuild_meanwhile)
    result = merging.merge_segments(idx, everything=True)
    assert result.obsolete and not result.written
    with GalleryIndex.open(idx) as g:
        assert [r.path for r in g.records(g.ids())] == ["new-0.jpg"]


WRITER_SCRIPT = """
import sys, numpy as np
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from test_concurrent_merge import vector, CARD
from test_segments import photo
from facesearch.index import open_writer
idx, model_dir, stop = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
n = 0
while not stop.exists() or n < 3:
    key, gone = f"proc{n}", f"s{n % 4}-{n // 4}"
    with open_writer(idx, card=CARD, model_dir=model_dir, wait=30) as w:
        w.add_photo(photo(key), [(0, None)], vector(key)[None])
        w.remove_photos([gone + ".jpg"])
        w.commit(merge=False)
    print("add", key, "del", gone, flush=True)  # acknowledged: committed
    n += 1
"""


def test_a_compaction_races_a_writing_process(tmp_path, writer_args):
    """A separate process enrols and removes, one commit each, the whole time a compaction to HNSW runs."""
    idx = tmp_path / "idx"
    live: dict[str, np.ndarray] = {}
    build_segments(idx, writer_args, live, segments=4, per=400)  # 1,600 vectors: HNSW once merged
    stop = tmp_path / "stop"
    proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(idx), str(writer_args["model_dir"]), str(stop),
                             str(Path(__file__).parent)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                                              os.environ.get("PYTHONPATH", "")])})
    try:
        first = proc.stdout.readline()  # the process is writing before the compaction starts
        assert first.startswith("add"), proc.stderr.read()
        result = merging.merge_segments(idx, everything=True, force=True, policy=IndexPolicy(index_type="hnsw"))
        during = read_manifest(idx).generation
    finally:
        stop.touch()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    lines = [first] + out.splitlines()
    for line in lines:
        _, key, _, gone = line.split()
        live[key] = vector(key)
        live.pop(gone, None)
    assert result.written and not result.obsolete
    m = read_manifest(idx)
    assert m.policy.index_type == "hnsw" and any(s.kind == "hnsw" for s in m.segments)
    with GalleryIndex.open(idx) as g:
        paths = sorted(r.path for r in g.records(g.ids()))
        assert paths == sorted(f"{key}.jpg" for key in live), "an acknowledged write is missing or a removed face is back"
        np.testing.assert_array_equal(g.vectors(g.ids()), np.stack([live[p[:-4]] for p in
                                                                    (r.path for r in g.records(g.ids()))]))
    print(f"{len(lines)} acknowledged commits by the other process; compaction at generation {during}")
