"""Durability of every commit path: what a commit names is fsynced, with its folder entry, before the manifest names it.

`os.fsync` and `os.replace` are observed (the fsynced path read back from /proc/self/fd), so the test
checks the order on disk a crash or power cut depends on, not timings: every file a new manifest names
is fsynced before `manifest.json` is replaced, the index folder is fsynced after the last new name
appeared in it and before the swap, the manifest's temporary file is fsynced before its rename and the
folder after it (so the commit is on disk when `commit` returns). SQLite commits its own rows with
`synchronous=FULL` (fsync at every commit), checked on the writer's connection.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from test_segments import CARD, D, add, unit

from facesearch.index import open_writer, read_manifest
from facesearch.index.openset.commit import calibrate_beside_writers
from facesearch.index.storage.merging import merge_segments
from facesearch.index.storage.photostore import PhotoStore

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads fsynced paths from /proc/self/fd")


@pytest.fixture
def disk(monkeypatch):
    """The fsyncs and renames of this process, in order: ("fsync", path) and ("replace", src, dst)."""
    events: list[tuple] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.realpath(src), os.path.realpath(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def check_commit_order(events: list[tuple], idx: Path, before: set[str]) -> None:
    """The order a commit must keep, for the files the current manifest names and `before` did not."""
    idx = idx.resolve()
    manifest = str(idx / "manifest.json")
    swaps = [i for i, e in enumerate(events) if e[0] == "replace" and e[2] == manifest]
    assert swaps, "the manifest was not replaced"
    swap = swaps[-1]
    new = sorted(read_manifest(idx).files - before)
    assert new, "the commit named no new file"
    for name in new:
        path = str(idx / name)
        if name.endswith(".sqlite"):
            continue  # SQLite's own fsyncs (synchronous=FULL), checked on the connection
        written = [i for i, e in enumerate(events) if e == ("fsync", path) or (e[0] == "replace" and e[2] == path)]
        assert written and written[0] < swap, f"{name} was not on disk before the manifest named it"
    appeared = max(i for i, e in enumerate(events) if e[0] == "replace" and e[2] in {str(idx / n) for n in new}) \
        if any(e[0] == "replace" and e[2] in {str(idx / n) for n in new} for e in events) else 0
    folder = [i for i, e in enumerate(events) if e == ("fsync", str(idx))]
    assert any(appeared <= i < swap for i in folder), "the folder entries of the new files were not fsynced first"
    tmp = events[swap][1]
    assert ("fsync", tmp) in events[:swap], "the manifest's temporary file was not fsynced before its rename"
    assert any(i > swap for i in folder), "the manifest's rename was not made durable before the commit returned"


@pytest.fixture
def writer_args(tmp_path):
    (tmp_path / "model").mkdir()
    return {"card": CARD, "model_dir": tmp_path / "model"}


def test_every_commit_path_is_on_disk_before_it_returns(tmp_path, writer_args, disk):
    rng = np.random.default_rng(3)
    idx = tmp_path / "idx"
    with open_writer(idx, **writer_args) as w:  # the first commit: a new folder, a new metadata file
        add(w, {f"a-{i}": v for i, v in enumerate(unit(rng, 20))})
        w.commit()
        assert w.store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert ("fsync", str(tmp_path.resolve())) in disk, "the new index folder's entry in its parent was not fsynced"
    check_commit_order(disk, idx, set())

    for step in range(3):  # enrolment + removal commits (tombstones), as the service makes them
        before, _ = read_manifest(idx).files, disk.clear()
        with open_writer(idx, **writer_args, defer_calibration=True) as w:
            add(w, {f"b{step}-{i}": v for i, v in enumerate(unit(rng, 5))})
            w.remove_photos([f"a-{step}.jpg"])
            w.commit(merge=False)
        check_commit_order(disk, idx, before)

    before, _ = read_manifest(idx).files, disk.clear()
    assert merge_segments(idx, everything=True).written  # a merge beside the writers: renamed into place
    check_commit_order(disk, idx, before)

    before, _ = read_manifest(idx).files, disk.clear()
    with open_writer(idx, **writer_args) as w:  # a merge in place
        add(w, {"c-0": unit(rng, 1)[0]})
        w.commit(merge=False)
        w.compact()
    check_commit_order(disk, idx, before)


def test_a_calibration_recorded_beside_the_writes_is_on_disk(tmp_path, writer_args, disk):
    idx = tmp_path / "idx"
    rng = np.random.default_rng(4)
    centres = unit(rng, 120)
    with open_writer(idx, **writer_args) as w:
        for p in range(120):
            faces = centres[p] + 0.5 * rng.standard_normal((2, D)).astype(np.float32) / np.sqrt(D)
            add(w, {f"p{p:03d}-{j}": v / np.linalg.norm(v) for j, v in enumerate(faces)})
        w.commit()
    before, generation = read_manifest(idx).files, read_manifest(idx).generation
    disk.clear()
    outcome = calibrate_beside_writers(idx, requested_fpir=0.05, force=True)
    assert outcome["generation"] == generation + 1
    manifest = str(idx.resolve() / "manifest.json")
    swap = max(i for i, e in enumerate(disk) if e[0] == "replace" and e[2] == manifest)
    assert ("fsync", disk[swap][1]) in disk[:swap] and ("fsync", str(idx.resolve())) in disk[swap:]
    assert read_manifest(idx).files == before and read_manifest(idx).calibration["target_fpir"] == 0.05


def test_a_stored_photo_and_its_new_folders_are_durable(tmp_path, disk):
    idx = tmp_path / "idx"
    idx.mkdir()
    store = PhotoStore(idx)
    sha = store.put(b"photo bytes", ".jpg")
    target = store.path(sha, ".jpg").resolve()
    fsynced = [e[1] for e in disk if e[0] == "fsync"]
    # the file, then the folders that name it and the folders created for it, up to the index folder
    for folder in (target.parent, target.parent.parent, idx.resolve()):
        assert str(folder) in fsynced, f"{folder} was not fsynced after a name appeared in it"
    assert ("replace", disk[[e[0] for e in disk].index("replace")][1], str(target)) in disk
