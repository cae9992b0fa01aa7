"""The Milvus gallery (facesearch.index.milvus): addresses and tokens, index types, the folder index's answers
on the same vectors, writes seen by other processes, a writer killed mid-write, and the faults a user meets.

`milvus_store` runs a test against Milvus Lite in this process and against `milvus-lite server` on a loopback
port (the uri/token path: parity, other processes, the killed writer, the lease); `lite_store` against Lite
alone where the client path does not differ. `make test-milvus MILVUS=milvus://host:19530/coll` adds a real
server to both (conftest.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from stores import FolderStore

from facesearch.embedder.core.errors import (
    FaceNotFoundError,
    IdentityNotFoundError,
    IndexFormatError,
    IndexMismatchError,
    MilvusAuthError,
    MilvusError,
    MilvusUnavailableError,
    PhotoNotFoundError,
)
from facesearch.embedder.core.model_card import ModelCard
from facesearch.index.milvus.address import TOKEN_ENV, TOKEN_FILE_ENV, milvus_token, parse_address
from facesearch.index.milvus.engine import choose_index

DIM = 16
CARD = ModelCard(name="synthetic-16", input_height=8, input_width=8, embedding_size=DIM, alignment_template="none")


def unit(x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def people(rng: np.random.Generator, identities: int, per: int, spread: float = 0.35) -> tuple[list[str], np.ndarray]:
    """Paths `pNNN/J.jpg` and `(identities * per, DIM)` unit vectors clustered by identity."""
    centres = rng.standard_normal((identities, DIM))
    v = unit(np.repeat(centres, per, axis=0) + spread * rng.standard_normal((identities * per, DIM)))
    return [f"p{i:03d}/{j}.jpg" for i in range(identities) for j in range(per)], v


def write_shards(folder: Path, paths: list[str], vectors: np.ndarray, card: ModelCard = CARD) -> Path:
    from facesearch.embedder.embedding_shards import EmbeddingRows
    from facesearch.embedder.embedding_shards.writer import ShardWriter

    order = np.argsort(paths, kind="stable")
    paths = [paths[i] for i in order]
    rows = EmbeddingRows(paths, [p.split("/")[0] for p in paths], np.zeros(len(paths), np.int32),
                         np.ascontiguousarray(vectors[order], np.float32), [None] * len(paths))
    with ShardWriter(folder, card, overwrite=folder.exists()) as w:
        w.write(rows)
    return folder


def reference_top(paths, vectors, queries, k):
    """The numpy brute force: (scores, paths) of the k best rows per query."""
    s = queries @ vectors.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), [[paths[j] for j in row] for row in order]


# --- addresses and tokens (no server) -------------------------------------------------------------------

def test_addresses_parse_into_uri_database_and_collection(tmp_path):
    a = parse_address("milvus://db.example:19531/prod/faces")
    assert (a.uri, a.db_name, a.collection, a.lite) == ("http://db.example:19531", "prod", "faces", False)
    assert a.meta_collection == "faces__facesearch"
    b = parse_address("milvus+tls://db.example/faces")
    assert (b.uri, b.db_name, str(b)) == ("https://db.example:19530", None, "milvus+tls://db.example:19530/faces")
    c = parse_address(f"milvus-lite:{tmp_path}/g.db")
    assert (c.uri, c.collection, c.lite) == (str(tmp_path / "g.db"), "faces", True)
    assert parse_address(f"milvus-lite:{tmp_path}/g.db#people").collection == "people"


@pytest.mark.parametrize("text, says", [
    ("milvus://root:secret@host/faces", "never on the command line"),
    ("milvus://host:99999/faces", "not a port number"),
    ("milvus://host/", "names no collection"),
    ("milvus://host/a/b/c", "names no collection"),
    ("milvus://host/9faces", "not allowed by Milvus"),
    ("milvus-lite:gallery.sqlite", "ending in .db"),
])
def test_bad_addresses_are_refused_with_what_to_write(text, says):
    with pytest.raises(MilvusError, match=says) as e:
        parse_address(text)
    assert "secret" not in str(e.value)


def test_token_comes_from_the_environment_or_a_file(tmp_path, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    monkeypatch.delenv(TOKEN_FILE_ENV, raising=False)
    assert milvus_token() is None
    file = tmp_path / "token"
    file.write_text("root:from-file\n")
    monkeypatch.setenv(TOKEN_FILE_ENV, str(file))
    assert milvus_token() == "root:from-file"
    monkeypatch.setenv(TOKEN_ENV, "root:from-env")
    assert milvus_token() == "root:from-env"  # the variable wins over the file
    monkeypatch.delenv(TOKEN_ENV)
    file.write_text("")
    with pytest.raises(MilvusAuthError, match="is empty"):
        milvus_token()
    monkeypatch.setenv(TOKEN_FILE_ENV, str(tmp_path / "missing"))
    with pytest.raises(MilvusAuthError, match="cannot read"):
        milvus_token()


def test_a_refused_token_and_a_dead_server_become_typed_errors():
    pytest.importorskip("pymilvus", reason="pip install 'facesearch[milvus]'")
    from pymilvus.exceptions import MilvusException

    from facesearch.index.milvus.engine import translated

    address = parse_address("milvus://127.0.0.1:1/faces")
    with pytest.raises(MilvusAuthError, match="refused the credentials.*FACESEARCH_MILVUS_TOKEN"):
        with translated(address, "connecting"):
            raise MilvusException(code=1800, message="auth check failure, please check username and password")
    with pytest.raises(MilvusUnavailableError, match="cannot reach Milvus"):
        with translated(address, "connecting"):
            raise MilvusException(code=2, message="Fail connecting to server on 127.0.0.1:1")


# --- index types ------------------------------------------------------------------------------------------

def test_index_types_map_onto_what_the_engine_builds():
    assert choose_index("flat", None, lite=True).index_type == "FLAT"
    assert choose_index(None, None, lite=True).index_type == "HNSW"  # auto
    hnsw = [choose_index("hnsw", r, lite=True).search_params["ef"] for r in (0.9, 0.99, 0.999)]
    assert hnsw == sorted(hnsw) and hnsw[0] < hnsw[-1]  # a higher target searches wider
    ivf = choose_index("ivf", 0.99, lite=True)
    assert (ivf.index_type, ivf.build_params["nlist"]) == ("IVF_FLAT", 1024) and 1 <= ivf.search_params["nprobe"] <= 1024
    assert choose_index("IVF_SQ8", None, lite=True).index_type == "IVF_SQ8"
    assert choose_index("DISKANN", None, lite=False).index_type == "DISKANN"  # a real server builds it


@pytest.mark.parametrize("kind", ["IVF_PQ", "DISKANN", "SCANN", "GPU_CAGRA"])
def test_types_milvus_lite_accepts_but_never_builds_are_refused(kind):
    with pytest.raises(MilvusError, match="builds nothing and scans every vector"):
        choose_index(kind, None, lite=True)
    with pytest.raises(MilvusError, match="FLAT, HNSW, IVF_FLAT, IVF_SQ8"):
        choose_index("annoy", None, lite=True)


def test_a_refused_type_is_refused_before_anything_is_written(lite_store, tmp_path, rng):
    paths, v = people(rng, 5, 2)
    shards = write_shards(tmp_path / "shards", paths, v)
    with pytest.raises(MilvusError, match="IVF_PQ"):
        lite_store.ingest(shards, index_type="IVF_PQ")
    with pytest.raises(IndexFormatError, match="no facesearch gallery"):
        lite_store.open()


def test_ivf_sq8_and_hnsw_galleries_find_what_exact_search_finds(lite_store, tmp_path, rng):
    paths, v = people(rng, 100, 3)
    shards = write_shards(tmp_path / "shards", paths, v)
    queries = v[::7]
    _, want = reference_top(paths, v, queries, 1)
    for kind in ("IVF_SQ8", "HNSW"):
        report = lite_store.ingest(shards, index_type=kind)
        assert report.index_types == [kind]
        with lite_store.open() as g:
            _, ids = g.search(queries, 1)
            got = [[r.path] for r in g.records(ids[:, 0])]
        assert np.mean([a == b for a, b in zip(got, want)]) >= 0.95


# --- the folder index's answers on the same vectors ------------------------------------------------------------

def test_enrol_and_remove_keep_search_equal_to_numpy_and_to_the_folder_index(milvus_store, tmp_path, rng):
    from facesearch.index.query import FaceSearcher

    paths, v = people(rng, 30, 4)
    shards = write_shards(tmp_path / "shards", paths, v)
    folder = FolderStore(tmp_path)
    folder.ingest(shards)
    report = milvus_store.ingest(shards)
    assert (report.added, report.vectors, report.identities, report.generation) == (120, 120, 30, 1)
    queries = unit(rng.standard_normal((12, DIM)))

    def check(live: np.ndarray) -> None:
        kept = [p for p, keep in zip(paths, live) if keep]
        ref_scores, ref_paths = reference_top(kept, v[live], queries, 10)
        with milvus_store.open() as g, folder.open() as f:
            scores, ids = g.search(queries, 10)
            assert len(g) == live.sum()
            assert [[r.path for r in g.records(row)] for row in ids] == ref_paths
            np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
            mine = FaceSearcher(g, card=CARD).answer_vectors(queries, k=3)
            theirs = FaceSearcher(f, card=CARD).answer_vectors(queries, k=3)
            assert [a["verdict"] for a in mine] == [b["verdict"] for b in theirs]
            assert [[m["identity"] for m in a["matches"]] for a in mine] == \
                   [[m["identity"] for m in b["matches"]] for b in theirs]

    live = np.ones(len(paths), bool)
    check(live)
    # Mirror a smaller shard folder: p003 leaves, one more photo of p004 goes.
    gone = [i for i, p in enumerate(paths) if p.startswith("p003/") or p == "p004/1.jpg"]
    live[gone] = False
    edited = write_shards(tmp_path / "shards", [p for p, keep in zip(paths, live) if keep], v[live])
    folder.ingest(edited)
    again = milvus_store.ingest(edited)
    assert (again.removed, again.unchanged, again.added, again.identities) == (5, 115, 0, 29)
    check(live)
    unchanged = milvus_store.ingest(edited)
    assert (unchanged.written, unchanged.generation) == (False, again.generation)


def test_removals_by_identity_face_and_photo(lite_store, tmp_path, rng):
    from facesearch.index.milvus.enrolment import remove

    paths, v = people(rng, 6, 3)
    lite_store.ingest(write_shards(tmp_path / "shards", paths, v))
    address = lite_store.address
    gone = remove(address, None, identity="p002")
    assert (gone.identity, gone.faces_removed, gone.photos_removed, gone.generation) == ("p002", 3, 3, 2)
    with lite_store.open() as g:
        face = g.records(g.search(v[:1], 1)[1][0])[0]  # p000/0.jpg
        assert (len(g), g.manifest.identities) == (15, 5)
    assert remove(address, None, face_id=face.id).faces_removed == 1
    assert remove(address, None, path="p005/2.jpg").identity == "p005"
    with lite_store.open() as g:
        assert (len(g), g.manifest.identities, g.manifest.photos) == (13, 5, 13)
        assert {r.path for r in g.records(g.ids())}.isdisjoint({"p000/0.jpg", "p005/2.jpg", "p002/0.jpg"})
    with pytest.raises(IdentityNotFoundError, match="p002"):
        remove(address, None, identity="p002")
    with pytest.raises(FaceNotFoundError):
        remove(address, None, face_id=face.id)
    with pytest.raises(PhotoNotFoundError):
        remove(address, None, path="p005/2.jpg")


def test_photo_builds_are_incremental(lite_store, tmp_path, rng, model_dir):
    from index_fakes import PixelEmbedder, bump_mtime, make_gallery, write_photo

    root = tmp_path / "photos"
    rels = make_gallery(root, {"alice": 3, "bob": 2, "carol": 4}, rng)
    emb = PixelEmbedder(model_dir)
    first = lite_store.build(root, emb)
    assert (first.added, first.vectors, first.identities) == (9, 9, 3)
    emb.read.clear()
    again = lite_store.build(root, emb)
    assert (again.unchanged, again.written, sum(emb.read.values())) == (9, False, 0)  # nothing read at all
    bump_mtime(root / rels[0])  # same bytes: checksummed, not embedded
    write_photo(root / rels[1], rng, key=99)  # new bytes: embedded again
    (root / rels[-1]).unlink()
    emb.read.clear()
    third = lite_store.build(root, emb)
    assert (third.updated, third.removed, third.unchanged, third.vectors) == (1, 1, 7, 8)
    assert list(emb.read) == [(root / rels[1]).as_posix()]
    with lite_store.open() as g:
        (found,) = g.records(g.search(emb.reference([root / rels[1]]), 1)[1][0])
        assert found.path == rels[1]


# --- faults ------------------------------------------------------------------------------------------------

def test_another_model_and_another_dimension_are_refused_naming_both(lite_store, tmp_path, rng):
    paths, v = people(rng, 4, 2)
    lite_store.ingest(write_shards(tmp_path / "a", paths, v))
    other = ModelCard(name="other-model", input_height=8, input_width=8, embedding_size=DIM, alignment_template="none")
    with pytest.raises(IndexMismatchError, match="'synthetic-16' \\(16-d\\).*'other-model' \\(16-d\\).*--rebuild"):
        lite_store.ingest(write_shards(tmp_path / "b", paths, v, other))
    wide = ModelCard(name="synthetic-16", input_height=8, input_width=8, embedding_size=32, alignment_template="none")
    with pytest.raises(IndexMismatchError, match="16-d"):
        lite_store.ingest(write_shards(tmp_path / "c", paths, unit(rng.standard_normal((8, 32))), wide))
    with lite_store.open() as g:
        with pytest.raises(IndexMismatchError, match="32-d but the Milvus gallery"):
            g.search(unit(rng.standard_normal((1, 32))), 3)
        assert len(g) == 8  # unchanged by the refused builds
    rebuilt = lite_store.ingest(tmp_path / "b", rebuild=True)
    assert (rebuilt.vectors, rebuilt.rebuilt) == (8, True)


def test_a_server_that_is_down_is_a_clear_error_and_the_cli_exits_1(tmp_path):
    pytest.importorskip("pymilvus", reason="pip install 'facesearch[milvus]'")
    from stores import free_port
    from typer.testing import CliRunner

    from facesearch.cli.main import app
    from facesearch.index.milvus.gallery import MilvusIndex

    address = f"milvus://127.0.0.1:{free_port()}/faces"
    with pytest.raises(MilvusUnavailableError, match="cannot reach Milvus.*unchanged"):
        MilvusIndex.open(parse_address(address))
    query = tmp_path / "q.parquet"
    write_shards(tmp_path / "q", ["x/0.jpg"], unit(np.ones((1, DIM))))
    query = next((tmp_path / "q").glob("*.parquet"))
    r = CliRunner().invoke(app, ["query", "--embeddings", str(query), "--index", address])
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith("Error: cannot reach Milvus at milvus://127.0.0.1:") and "Traceback" not in r.output
    r = CliRunner().invoke(app, ["remove", "someone", "--index", "milvus://root:pw@127.0.0.1/faces"])
    assert r.exit_code == 1 and "FACESEARCH_MILVUS_TOKEN" in r.stderr and "pw" not in r.stderr.replace("password", "")


def test_folder_only_commands_refuse_a_milvus_address():
    from typer.testing import CliRunner

    from facesearch.cli.main import app

    r = CliRunner().invoke(app, ["compact", "--index", "milvus://127.0.0.1/faces"])
    assert r.exit_code == 1 and "index folders only" in r.stderr, r.output


# --- other processes: what they see, and a writer killed mid-write ------------------------------------------

def _python(script: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `script` in a fresh interpreter of this checkout (the code under test, not an installed copy)."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[2]),
                                                                    os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], capture_output=True, text=True,
                       env=env, timeout=180)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_a_write_acknowledged_by_one_process_is_seen_by_the_next_query_of_another(request, tmp_path, rng):
    from stores import MilvusStore, unique_collection

    from facesearch.api.milvus import MilvusGallery
    from facesearch.index.query import FaceSearcher

    store = MilvusStore("milvus-server", f"milvus://{request.getfixturevalue('lite_server')}/{unique_collection()}")
    paths, v = people(rng, 10, 3)
    store.ingest(write_shards(tmp_path / "shards", paths, v))
    gallery = MilvusGallery(store.index)  # stays open in this process, as a service's would

    def verdicts(queries):
        return [a["verdict"] for a in FaceSearcher(gallery.reader(), card=CARD).answer_vectors(queries, k=1,
                                                                                               threshold=0.9)]

    assert verdicts(v[3:4]) == ["p001"]
    r = _python("import sys\nfrom facesearch.cli.main import app\napp(['remove', 'p001', '--index', sys.argv[1]])",
                store.index, check=False)
    assert r.returncode == 0 and "removed 'p001': 3 face(s)" in r.stdout, r.stderr[-2000:]
    assert verdicts(v[3:4]) != ["p001"]  # the very next query, no reopen asked for
    newcomer = unit(rng.standard_normal((1, DIM)))
    write_shards(tmp_path / "more", [*paths, "zoe/0.jpg"], np.concatenate([v, newcomer]))
    _python("import sys\nfrom facesearch.cli.main import app\n"
            "app(['build-index', '--from-embeddings', sys.argv[2], '--index', sys.argv[1], '--json'])",
            store.index, str(tmp_path / "more"), check=False)
    assert verdicts(newcomer) == ["zoe"]
    assert gallery.reader().manifest.faces == 31  # the mirror brought p001 back, and zoe
    gallery.close()
    store.close()


KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from facesearch.index.milvus import writer
from facesearch.index.milvus.address import parse_address
from facesearch.index.milvus.build import build_from_embeddings

address, shards, where = parse_address(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
if where != "never":
    method = "_insert" if where == "insert" else "_upsert"
    original = getattr(writer.MilvusWriter, method)

    def half_then_die(self, rows):
        original(self, rows[: max(1, len(rows) // 2)])  # acknowledged by Milvus, then the process dies
        os.kill(os.getpid(), signal.SIGKILL)

    setattr(writer.MilvusWriter, method, half_then_die)
build_from_embeddings(shards, address, None, index_type="flat")
"""


def test_a_writer_killed_mid_write_leaves_no_face_half_written(milvus_store, tmp_path, rng):
    from facesearch.index.milvus.engine import ALIVE, connect, disconnect
    from facesearch.index.milvus.writer import open_milvus_writer

    paths, v = people(rng, 20, 3)
    _python(KILLED_WRITER, milvus_store.index, str(write_shards(tmp_path / "a", paths, v)), "never")
    more_paths, more = people(np.random.default_rng(7), 60, 4)
    more_paths = [p.replace("p", "q", 1) for p in more_paths]
    grown = write_shards(tmp_path / "b", [*paths, *more_paths], np.concatenate([v, more]))
    shrunk = write_shards(tmp_path / "c", paths[9:], v[9:])  # three identities removed
    queries = unit(rng.standard_normal((10, DIM)))
    ref_scores, ref_paths = reference_top(paths, v, queries, 5)
    collection = milvus_store.address.collection

    def rows(where: str) -> int:
        client = connect(milvus_store.address, None)
        client.load_collection(collection)  # a Lite data path opened by a new process starts released
        n = client.query(collection, filter=where, output_fields=["count(*)"])[0]["count(*)"]
        disconnect(client, milvus_store.address)
        return n

    for shards, where, left in ((grown, "insert", "id >= 0"), (shrunk, "upsert", f"removed < {ALIVE}")):
        r = _python(KILLED_WRITER, milvus_store.index, str(shards), where, check=False)
        assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
        assert rows(left) > (len(paths) if where == "insert" else 0)  # the dead writer's rows are in Milvus ...
        with milvus_store.open() as g:  # ... and no reader sees them
            assert (g.manifest.generation, len(g)) == (1, len(paths))
            scores, ids = g.search(queries, 5)
            assert [[r.path for r in g.records(row)] for row in ids] == ref_paths
            np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
            client = g.client
            open_milvus_writer(client, milvus_store.address).release()  # the next writer rolls them back
            assert client.query(collection, filter="id >= 0", output_fields=["count(*)"])[0]["count(*)"] == len(paths)
            assert client.query(collection, filter=f"removed < {ALIVE}", output_fields=["count(*)"])[0]["count(*)"] == 0
    done = milvus_store.ingest(grown)
    assert (done.generation, done.vectors, done.identities) == (2, len(paths) + len(more_paths), 80)


def test_an_enrolment_is_found_and_enrolling_it_again_changes_nothing(lite_store, tmp_path, rng):
    from facesearch.index.milvus.enrolment import enrol_face
    from facesearch.index.storage.store import Photo

    paths, v = people(rng, 5, 2)
    lite_store.ingest(write_shards(tmp_path / "shards", paths, v))  # the shards record no face policy
    ada = unit(rng.standard_normal(DIM))
    photo = Photo(".enrolled/ada/" + "ab" * 32 + ".jpg", "ada", 10, 0, "ab" * 32, 2, "api")
    args = (lite_store.address, None, CARD, "model", "ada", photo, 1, (1.0, 2.0, 30.0, 40.0), ada)
    first = enrol_face(*args, build={"faces": "largest", "crops": "x"})
    again = enrol_face(*args, build={"faces": "all", "crops": "y"})  # an enrolment checks the model only
    assert (first.new, again.new, again.id, again.generation) == (True, False, first.id, first.generation)
    with lite_store.open() as g:
        (record,) = g.records(g.search(ada[None], 1)[1][0])
        assert (record.identity, record.face, record.box, len(g), g.manifest.identities) == \
               ("ada", 1, (1.0, 2.0, 30.0, 40.0), 11, 6)
    other = ModelCard(name="other", input_height=8, input_width=8, embedding_size=DIM, alignment_template="none")
    with pytest.raises(IndexMismatchError, match="'other'"):
        enrol_face(lite_store.address, None, other, "model", "bob", photo, 0, None, ada, build={})


def test_a_second_writer_is_refused_while_the_first_holds_the_lease(milvus_store, tmp_path, rng):
    from facesearch.embedder.core.errors import IndexBusyError
    from facesearch.index.milvus.engine import connect, disconnect
    from facesearch.index.milvus.writer import open_milvus_writer

    paths, v = people(rng, 3, 2)
    milvus_store.ingest(write_shards(tmp_path / "shards", paths, v))
    client = connect(milvus_store.address, None)
    first = open_milvus_writer(client, milvus_store.address)
    with pytest.raises(IndexBusyError, match=f"process {os.getpid()}"):
        open_milvus_writer(client, milvus_store.address, wait=0.3)
    first.release()
    open_milvus_writer(client, milvus_store.address).release()
    disconnect(client, milvus_store.address)
