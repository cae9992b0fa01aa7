"""Writes while the service answers: consistency under concurrent queries, CLI builds picked up live,
who owns what across folder builds, a kill mid-enrolment, and a graceful stop."""

from __future__ import annotations

import bisect
import io
import shutil
import signal
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image
from servers import ProcessServer, client
from typer.testing import CliRunner

from facesearch.cli.main import app
from facesearch.index import GalleryIndex
from facesearch.index.storage.photostore import PhotoStore


def upload(path, field="photos"):
    return {field: (path.name, path.read_bytes(), "image/jpeg")}


def identities_of(answer: dict) -> set[str]:
    return {m["identity"] for f in answer["faces"] for m in f["matches"]}


def crops_of_astronaut(n: int) -> list[tuple[str, bytes, str]]:
    """`n` different photos (different bytes) of the same face: the astronaut cut slightly differently."""
    from skimage import data

    image = data.astronaut()
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image[0:480 - 4 * i, 3 * i:])).save(buf, format="JPEG", quality=90)
        out.append(("photos", (f"crop{i}.jpg", buf.getvalue(), "image/jpeg")))
    return out


def test_queries_stay_consistent_while_writes_commit(server, photos):
    """Each answer equals the state of the generation it reports: collins is among the matches
    exactly when the last write at or before that generation enrolled (rather than removed) him."""
    writes: list[tuple[int, bool]] = []  # (generation, collins present after it)
    answers: list[tuple[int, bool]] = []
    failures: list[str] = []
    done = threading.Event()

    def write():
        with client(server.url) as c:
            try:
                for _ in range(4):
                    r = c.post("/v1/identities/collins/faces", files=upload(photos / "astronaut_flip.jpg"))
                    assert r.status_code == 201, r.text
                    writes.append((r.json()["generation"], True))
                    r = c.delete("/v1/identities/collins")
                    assert r.status_code == 200, r.text
                    writes.append((r.json()["generation"], False))
            except AssertionError as e:
                failures.append(str(e))
            finally:
                done.set()

    def ask():
        with client(server.url) as c:
            while not done.is_set():
                r = c.post("/v1/query", files=upload(photos / "astronaut.jpg", "photo"), params={"k": 5})
                if r.status_code != 200:
                    failures.append(r.text)
                    continue
                answer = r.json()
                answers.append((answer["generation"], "collins" in identities_of(answer)))
                f = answer["faces"][0]
                scores = [m["score"] for m in f["matches"]]
                assert scores == sorted(scores, reverse=True) and f["verdict"] in ("eileen", "collins")

    threads = [threading.Thread(target=write)] + [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not failures, failures[:3]
    assert len(writes) == 8 and len(answers) >= 4
    generations = [g for g, _ in writes]
    assert generations == sorted(generations)
    for generation, present in answers:
        i = bisect.bisect_right(generations, generation)
        expected = writes[i - 1][1] if i else False  # merges commit generations of their own, same content
        assert present == expected, (generation, present, writes)


def test_a_cli_build_is_picked_up_without_a_restart(server, gallery, photos, index_dir, tmp_path):
    folder = tmp_path / "gallery"
    shutil.copytree(gallery, folder)
    (folder / "collins").mkdir()
    (folder / "collins" / "flip.jpg").write_bytes((photos / "astronaut_flip.jpg").read_bytes())
    r = CliRunner().invoke(app, ["build-index", str(folder), "--index", str(index_dir), "--json"])
    assert r.exit_code == 0, r.output
    deadline = time.monotonic() + 10
    while server.client.get("/v1/stats").json()["identities"] != 3:
        assert time.monotonic() < deadline, "the server did not pick up the build"
        time.sleep(0.1)
    answer = server.client.post("/v1/query", files=upload(photos / "astronaut.jpg", "photo"), params={"k": 3}).json()
    assert identities_of(answer) == {"eileen", "collins", "cameraman"}


def test_a_folder_build_keeps_what_was_changed_through_the_api(server, gallery, photos, index_dir):
    c = server.client
    assert c.post("/v1/identities/collins/faces", files=upload(photos / "astronaut_flip.jpg")).status_code == 201
    assert c.delete("/v1/identities/cameraman").json()["excluded"] == ["cameraman/camera.png"]
    for args in ([], ["--rebuild"]):  # an update, then a rebuild that embeds the enrolled photo again
        r = CliRunner().invoke(app, ["build-index", str(gallery), "--index", str(index_dir), "--json", *args])
        assert r.exit_code == 0, r.output
        assert '"excluded": 1' in r.output
    server.service.snapshots.refresh(force=True)
    listing = c.get("/v1/identities").json()["identities"]
    assert [i["identity"] for i in listing] == ["collins", "eileen"]


@pytest.fixture
def served_process(index_dir, tmp_path):
    """`facesearch serve` in a child process in which importing TensorFlow or Keras fails (the service is on
    the run-time path: it must never import them)."""
    poison = tmp_path / "no-tensorflow"
    for name in ("tensorflow", "keras"):
        (poison / name).mkdir(parents=True)
        (poison / name / "__init__.py").write_text(f"raise ImportError('{name} was imported')\n")

    def start(*args: str) -> ProcessServer:
        return ProcessServer("--index", index_dir, *args, log=tmp_path / f"serve-{time.monotonic_ns()}.log",
                             env={"PYTHONPATH": str(poison)})

    return start


def faces_of(index_dir, identity: str) -> int:
    with GalleryIndex.open(index_dir) as g:  # loadable, consistent (counts checked on open)
        return len(g.store.ids_of_identity(identity))


def test_a_server_killed_mid_enrolment_leaves_it_wholly_present_or_absent(served_process, index_dir):
    photos = crops_of_astronaut(8)
    outcomes, took = [], None
    for fraction in (0.25, 0.9, 1.1):  # of the time an enrolment takes: while embedding, about committing, after
        with served_process() as s:
            if took is None:  # first, one that is acknowledged (and timed)
                with client(s.url) as c:
                    started = time.perf_counter()
                    assert c.post("/v1/identities/acknowledged/faces", files=photos).status_code == 201
                    took = time.perf_counter() - started
            sent = threading.Thread(target=_post_quietly, args=(s.url, f"killed{fraction}", photos), daemon=True)
            sent.start()
            time.sleep(took * fraction)
            s.signal(signal.SIGKILL)
            s.wait()
        n = faces_of(index_dir, f"killed{fraction}")
        assert n in (0, 8), (fraction, n, took)
        outcomes.append(n)
        assert faces_of(index_dir, "acknowledged") == 8  # an acknowledged enrolment is durable
    assert 0 in outcomes, (outcomes, took)  # at least one kill landed before the commit
    orphan = PhotoStore(index_dir).put(b"bytes a crashed write stored but never committed", ".jpg")
    with served_process() as s, client(s.url) as c:  # a restart sweeps photos no enrolment names
        assert c.get("/v1/stats").json()["faces"] == 2 + 8 + sum(outcomes)
        with GalleryIndex.open(index_dir) as g:
            enrolled = g.store.photos("api")
        assert len(enrolled) == 8 + sum(outcomes)  # the same 8 photos under each identity that got them
        live = {p.sha256 for p in enrolled.values()}
        deadline = time.monotonic() + 30
        while orphan in PhotoStore(index_dir).stored():  # the sweep runs in the background after start
            assert time.monotonic() < deadline, s.text()
            time.sleep(0.1)
        assert set(PhotoStore(index_dir).stored()) == live and len(live) == 8


def _post_quietly(url, identity, photos):
    try:
        with client(url) as c:
            c.post(f"/v1/identities/{identity}/faces", files=photos)
    except Exception:  # the server is killed under it
        pass


def test_sigterm_finishes_the_request_in_flight_then_exits(served_process, index_dir):
    photos = crops_of_astronaut(6)
    s = served_process()
    result = {}

    def enrol():
        with client(s.url) as c:
            result["response"] = c.post("/v1/identities/in-flight/faces", files=photos)

    t = threading.Thread(target=enrol)
    t.start()
    time.sleep(0.5)  # the request is being worked on
    s.signal(signal.SIGTERM)
    t.join(120)
    assert s.wait(60) == 0, s.text()
    assert result["response"].status_code == 201, result["response"].text
    assert faces_of(index_dir, "in-flight") == 6
    log = s.text()
    assert "POST /v1/identities/in-flight/faces 201" in log and "Shutting down" in log


def test_workers_on_a_new_folder_start_from_one_index(tmp_path, default_model):
    # Two workers used to race to create the index (2 failed starts in 7); the parent creates it now.
    index = tmp_path / "new"
    with ProcessServer("--index", index, "--model", default_model, "--workers", "2", log=tmp_path / "w.log") as s:
        with client(s.url) as c:
            deadline = time.monotonic() + 60
            while True:  # the parent binds the port; the socket listens once a worker has started
                try:
                    health = c.get("/v1/health").json()
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline, s.text()
                    time.sleep(0.2)
            assert health["status"] == "ok", s.text()
            assert c.get("/v1/stats").json()["faces"] == 0
        assert (index / "manifest.json").is_file()
        log = s.text()
        assert log.count("created an empty one") == 1 and "Traceback" not in log, log
        assert log.index("created an empty one") < log.index("Started parent process"), log  # by the parent


def test_removing_what_is_not_there_answers_at_once_while_a_writer_holds_the_index(server, index_dir, default_model):
    from facesearch.embedder.core.model_card import ModelCard
    from facesearch.index import open_writer

    with open_writer(index_dir, card=ModelCard.load(default_model), model_dir=default_model):  # a build, say
        started = time.perf_counter()
        for _ in range(5):
            assert server.client.delete("/v1/faces/424242").status_code == 404
            assert server.client.delete("/v1/identities/nobody").status_code == 404
        assert time.perf_counter() - started < 5.0  # not 10 x the write wait (10 s each) behind the lock
        r = server.client.delete("/v1/identities/eileen")  # a real removal still waits its turn, then says why
    assert r.status_code == 503 and r.headers["retry-after"] == "10", r.text
    assert server.client.delete("/v1/identities/eileen").status_code == 200  # the lock is free again
