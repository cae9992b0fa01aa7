"""The photo loop in worker processes: the same results as one process, bad photos and dead workers reported."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage", reason="scikit-image ships the photos: pip install scikit-image")

from pipeline_fakes import PicklableSource, real_gallery, write_linear_model, write_photos  # noqa: E402

import facesearch.embedder.pipeline as pipeline  # noqa: E402
from facesearch.embedder.align import DLIB_150  # noqa: E402
from facesearch.embedder.pipeline import embed_photos, worker_factory  # noqa: E402
from facesearch.embedder.runtime import Embedder  # noqa: E402


@pytest.fixture
def any_job_size(monkeypatch):
    """Let the loop start worker processes however few photos a test has."""
    monkeypatch.setattr(pipeline, "MIN_PHOTOS_PER_PROCESS", 1)


def _run(paths, source, workers, batch_size=2, policy="all"):
    return [r for batch in embed_photos(paths, source, batch_size=batch_size, policy=policy, workers=workers)
            for r in batch]


def test_workers_give_what_one_process_gives_on_real_photos(tmp_path, any_job_size):
    paths = real_gallery(tmp_path / "photos")
    embedder = Embedder(write_linear_model(tmp_path / "model", 150, DLIB_150.name))

    alone, parallel = _run(paths, embedder, workers=1), _run(paths, embedder, workers=2)

    assert [r.position for r in parallel] == list(range(len(paths)))
    by_name = {p.relative_to(tmp_path / "photos").as_posix(): r for p, r in zip(paths, parallel)}
    assert {k for k, r in by_name.items() if r.error is not None} == {"broken/empty.jpg", "broken/truncated.jpg"}
    assert by_name["broken/empty.jpg"].error.reason == "empty file"
    assert all(by_name[k].n_faces >= 1 for k in by_name if k.startswith("collins/"))
    assert by_name["nobody/coffee.jpg"].n_faces == 0 and by_name["nobody/chelsea.png"].n_faces == 0
    for a, b in zip(alone, parallel):
        assert (a.path, a.sha256, a.n_faces, a.reuse) == (b.path, b.sha256, b.n_faces, b.reuse)
        assert (a.error is None) == (b.error is None) and (a.error is None or a.error.reason == b.error.reason)
        assert [k for k, _ in a.kept] == [k for k, _ in b.kept]
        np.testing.assert_allclose([box for _, box in a.kept], [box for _, box in b.kept], atol=1e-3)
        if a.vectors is not None:
            np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)
    # The 2600-px JPEG was searched decoded at half size; its face lands where the 512-px photo's does, scaled.
    small, large = by_name["collins/plain.png"].kept[0][1], by_name["collins/large.jpg"].kept[0][1]
    np.testing.assert_allclose(np.array(large) * 512 / 2600, small, atol=4)


def test_sha256_is_of_the_file_read_once(tmp_path, any_job_size):
    paths = write_photos(tmp_path / "photos", 12)
    from facesearch.embedder.core.model_card import sha256_file

    results = _run(paths, PicklableSource(tmp_path), workers=2, batch_size=3)
    assert [r.sha256 for r in results] == [sha256_file(p) for p in paths]
    reused = [r for batch in embed_photos(paths, PicklableSource(tmp_path), batch_size=3, policy="largest", workers=2,
                                          reusable=frozenset({results[4].sha256})) for r in batch]
    assert [r.reuse for r in reused] == [i == 4 for i in range(12)] and reused[4].vectors is None


def test_a_photo_that_kills_its_worker_is_reported_and_the_rest_go_on(tmp_path, any_job_size):
    paths = write_photos(tmp_path / "photos", 30)
    source = PicklableSource(tmp_path, crash=paths[7].name)

    results = _run(paths, source, workers=2, batch_size=4)

    assert [r.position for r in results] == list(range(30))
    assert [i for i, r in enumerate(results) if r.error is not None] == [7]
    assert "worker process reading it died" in results[7].error.reason
    reference = _run(paths, PicklableSource(tmp_path), workers=1, batch_size=4)
    for i, (a, b) in enumerate(zip(reference, results)):
        if i != 7:
            np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-6)


def test_a_source_that_cannot_go_to_a_process_stays_in_this_one(tmp_path, any_job_size):
    paths = write_photos(tmp_path / "photos", 10)
    local = PicklableSource(tmp_path, log=tmp_path / "pids")
    local.lock = threading.Lock()  # no longer picklable
    assert worker_factory(local) is None and worker_factory(PicklableSource(tmp_path)) is not None

    results = _run(paths, local, workers=2, batch_size=3)

    assert {int(p) for p in (tmp_path / "pids").read_text().split()} == {os.getpid()}
    reference = _run(paths, PicklableSource(tmp_path), workers=2, batch_size=3)
    for a, b in zip(reference, results):
        np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-6)


def test_embedder_goes_to_workers_as_a_recipe_not_a_session(tmp_path):
    embedder = Embedder(write_linear_model(tmp_path / "model", 8, "none"), threads=3)
    factory = worker_factory(embedder)
    copy = factory()
    assert (copy.model_dir, copy.aligned, copy.detector_config, copy.threads, copy.batches) == \
        (embedder.model_dir, embedder.aligned, embedder.detector_config, 1, True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")  # a zombie is gone


def _pids(log: Path) -> set[int]:
    return {int(p) for p in log.read_text().split()} if log.exists() else set()


def _wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_leaving_the_loop_early_stops_the_workers(tmp_path, any_job_size):
    paths = write_photos(tmp_path / "photos", 40)
    log = tmp_path / "pids"
    loop = embed_photos(paths, PicklableSource(tmp_path, slow=0.05, log=log), batch_size=2, policy="all", workers=2)
    next(loop)
    loop.close()
    workers = _pids(log) - {os.getpid()}
    assert len(workers) == 2
    assert _wait_until(lambda: not any(_alive(p) for p in workers), 10), "a worker outlived the loop"


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a process group")
def test_ctrl_c_stops_the_loop_and_its_workers(tmp_path):
    write_photos(tmp_path / "photos", 60)
    log = tmp_path / "pids"
    script = (
        "import sys, facesearch.embedder.pipeline as p\n"
        "from pathlib import Path\n"
        "from pipeline_fakes import PicklableSource\n"
        "p.MIN_PHOTOS_PER_PROCESS = 1\n"
        f"paths = sorted(Path({str(tmp_path / 'photos')!r}).rglob('*.png'))\n"
        f"source = PicklableSource(Path({str(tmp_path)!r}), slow=0.2, log=Path({str(log)!r}))\n"
        "for batch in p.embed_photos(paths, source, batch_size=2, policy='all', workers=2):\n"
        "    pass\n"
        "print('finished')\n")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert _wait_until(lambda: len(_pids(log)) >= 2, 60), "the workers never started"
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole process group
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "finished" not in out and "KeyboardInterrupt" in err, err[-2000:]
    assert err.count("Traceback") == 1, err[-3000:]  # the parent's alone: workers ignore Ctrl-C
    workers = _pids(log) - {proc.pid}
    assert _wait_until(lambda: not any(_alive(p) for p in workers), 10), "a worker outlived Ctrl-C"


def test_detecting_several_photos_at_once_finds_what_one_at_a_time_finds():
    from skimage import data

    from facesearch.embedder.detect import Detector

    photos = [data.astronaut(), np.repeat(data.camera()[..., None], 3, axis=2), data.coffee(), data.astronaut()[::2, ::2]]
    detector = Detector()
    many = detector.detect_arrays(photos)
    for photo, rows in zip(photos, many):
        np.testing.assert_allclose(rows, detector.detect_array(photo), atol=1e-4)
    assert [len(r) for r in many] == [1, 1, 0, 1]


def test_a_large_jpeg_is_decoded_reduced_with_the_factors_to_full_size(tmp_path):
    from PIL import Image

    from facesearch.embedder.images import read_image, read_image_reduced

    pixels = np.random.default_rng(0).integers(0, 256, (1800, 2700, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: upright it is 1800 wide, 2700 high
    Image.fromarray(pixels).save(tmp_path / "big.jpg", exif=exif, quality=90)
    data = (tmp_path / "big.jpg").read_bytes()

    full = read_image(tmp_path / "big.jpg")
    reduced, (fx, fy) = read_image_reduced(tmp_path / "big.jpg", min_size=(640, 640), data=data)

    # 1/2: the smallest scale that keeps both sides >= 640 (1/4 would make the short side 450)
    assert full.shape == (2700, 1800, 3) and reduced.shape == (1350, 900, 3)
    assert (fx, fy) == (0.5, 0.5)
    assert read_image_reduced(tmp_path / "big.jpg", min_size=(300, 300), data=data)[0].shape == (675, 450, 3)
    assert read_image_reduced(tmp_path / "big.jpg", data=data)[1] == (1.0, 1.0)
