"""An index built by worker processes holds what one built in a single process holds; Ctrl-C keeps the old one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

EMBEDDER_TESTS = Path(__file__).resolve().parents[1] / "embedder"
sys.path.insert(0, str(EMBEDDER_TESTS))  # the photo-loop helpers, which spawned workers import by name

pytest.importorskip("skimage", reason="scikit-image ships the photos: pip install scikit-image")

from pipeline_fakes import PicklableSource, real_gallery, write_linear_model, write_photos  # noqa: E402

import facesearch.embedder.pipeline as pipeline  # noqa: E402
from facesearch.embedder.align import DLIB_150  # noqa: E402
from facesearch.embedder.runtime import Embedder  # noqa: E402
from facesearch.index import GalleryIndex, build_index  # noqa: E402


def _contents(index_dir: Path) -> dict[tuple[str, int], tuple[str, tuple | None, np.ndarray]]:
    """(path, face) -> (identity, box, vector) of every stored face."""
    with GalleryIndex.open(index_dir) as g:
        records = g.records(g.ids())
        vectors = g.vectors([r.id for r in records])
        return {(r.path, r.face): (r.identity, r.box, v) for r, v in zip(records, vectors)}


def test_index_built_by_workers_equals_the_single_process_one(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "MIN_PHOTOS_PER_PROCESS", 1)
    photos = tmp_path / "photos"
    real_gallery(photos)
    embedder = Embedder(write_linear_model(tmp_path / "model", 150, DLIB_150.name))

    one = build_index(photos, tmp_path / "one", embedder, batch_size=2, faces="all", workers=1)
    many = build_index(photos, tmp_path / "many", embedder, batch_size=2, faces="all", workers=3)

    assert (one.vectors, one.no_face, sorted(one.skipped)) == (many.vectors, many.no_face, sorted(many.skipped))
    assert sorted(p for p, _ in many.skipped) == ["broken/empty.jpg", "broken/truncated.jpg"]
    a, b = _contents(tmp_path / "one"), _contents(tmp_path / "many")
    assert sorted(a) == sorted(b) and len(a) == one.vectors >= 5
    for key in a:
        (id_a, box_a, v_a), (id_b, box_b, v_b) = a[key], b[key]
        assert id_a == id_b
        np.testing.assert_allclose(box_a, box_b, atol=1e-3)
        np.testing.assert_allclose(v_a, v_b, atol=1e-5)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a process group")
def test_ctrl_c_during_a_parallel_build_leaves_the_previous_index(tmp_path):
    photos = tmp_path / "photos"
    write_photos(photos, 40)
    build_index(photos, tmp_path / "index", PicklableSource(tmp_path), workers=1)
    before = _contents(tmp_path / "index")
    write_photos(photos / "more", 40, seed=1)
    log = tmp_path / "pids"
    script = (
        "import facesearch.embedder.pipeline as p\n"
        "from pathlib import Path\n"
        "from facesearch.index import build_index\n"
        "from pipeline_fakes import PicklableSource\n"
        "p.MIN_PHOTOS_PER_PROCESS = 1\n"
        f"source = PicklableSource(Path({str(tmp_path)!r}), slow=0.2, log=Path({str(log)!r}))\n"
        f"build_index(Path({str(photos)!r}), Path({str(tmp_path / 'index')!r}), source, batch_size=2, workers=2)\n"
        "print('finished')\n")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(EMBEDDER_TESTS), *sys.path])}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and len(set(log.read_text().split())) >= 2) and time.monotonic() < deadline:
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "finished" not in out and "KeyboardInterrupt" in err, err[-2000:]
    after = _contents(tmp_path / "index")
    assert sorted(after) == sorted(before)
    for key in before:
        np.testing.assert_array_equal(before[key][2], after[key][2])
