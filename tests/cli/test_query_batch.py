"""`facesearch query PATH...` and `query --embeddings FILE`: many inputs, one load, the single-photo answers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from clitools import ENROLLED, STRANGERS, invoke, invoke_json
from PIL import Image


@pytest.fixture(scope="module")
def index(faces, model_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("index") / "gallery.index"
    invoke_json("build-index", "--aligned", faces / "gallery", "--model", model_dir, "--index", path)
    return path


def _lines(r) -> list[dict]:
    assert r.exit_code == 0, r.output
    return [json.loads(line) for line in r.stdout.splitlines()]


def _same_faces(got: list[dict], want: list[dict]) -> None:
    """Equal answers, scores to float noise (a batch embeds crops in other groupings than one photo)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert {k: v for k, v in g.items() if k not in ("matches", "decision")} == \
            {k: v for k, v in w.items() if k not in ("matches", "decision")}
        floats = {k for k, v in w["decision"].items() if isinstance(v, float)}
        assert {k: v for k, v in g["decision"].items() if k not in floats} == \
            {k: v for k, v in w["decision"].items() if k not in floats}
        np.testing.assert_allclose([g["decision"][k] for k in sorted(floats)], [w["decision"][k] for k in sorted(floats)],
                                   atol=1e-5)
        assert [(m["identity"], m["path"], m["id"]) for m in g["matches"]] == [
            (m["identity"], m["path"], m["id"]) for m in w["matches"]]
        np.testing.assert_allclose([m["score"] for m in g["matches"]], [m["score"] for m in w["matches"]], atol=1e-5)


def test_jsonl_answers_each_photo_in_input_order_as_the_single_photo_query_does(faces, index):
    probes = faces / "probes"
    inputs = [probes / "id_07" / "033.png", probes / "id_02", probes / "id_11" / "033.png"]
    r = invoke("query", "--aligned", *inputs, "--index", index, "--jsonl", "-k", "3")
    lines = _lines(r)

    expected = [probes / "id_07" / "033.png", probes / "id_02" / "033.png", probes / "id_11" / "033.png"]
    assert [line["image"] for line in lines] == [str(p) for p in expected]
    for line, photo in zip(lines, expected):
        single = invoke_json("query", "--aligned", photo, "--index", index, "-k", "3")
        assert {k: v for k, v in line.items() if k != "faces"} == {k: v for k, v in single.items() if k != "faces"}
        _same_faces(line["faces"], single["faces"])
    assert "answered 3 of 3 photos" in r.stderr


def test_a_photo_that_cannot_be_answered_gets_an_error_line(faces, index, tmp_path):
    from skimage import data

    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(tmp_path / "blank.png")
    (tmp_path / "broken.jpg").write_bytes(b"not a photo")
    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
    inputs = [tmp_path / "blank.png", tmp_path / "astronaut.png", tmp_path / "broken.jpg"]

    r = invoke("query", *inputs, "--index", index, "--jsonl")  # detection on: the blank photo has no face
    blank, astronaut, broken = _lines(r)
    assert blank["faces"] == [] and blank["error_type"] == "NoFaceFoundError"
    assert blank["error"].startswith(f"no face found in '{tmp_path / 'blank.png'}'")
    assert broken["error_type"] == "ImageReadError" and "cannot read image" in broken["error"]
    assert len(astronaut["faces"]) == 1 and "error" not in astronaut
    assert "answered 1 of 3 photos; 2 could not be answered" in r.stderr

    r = invoke("query", *inputs, "--index", index)  # the text form: one block per photo
    assert r.exit_code == 0, r.output
    assert f"{tmp_path / 'blank.png'}: error: no face found" in r.stdout and f"{tmp_path / 'astronaut.png'}:\n  " in r.stdout
    whole = invoke_json("query", *inputs, "--index", index)
    assert (whole["answered"], whole["failed"], len(whole["answers"])) == (1, 2, 3)

    r = invoke("query", tmp_path / "blank.png", tmp_path / "broken.jpg", "--index", index, "--jsonl")
    assert r.exit_code == 1 and "Error: none of the 2 photos could be answered" in r.stderr
    assert len(r.stdout.splitlines()) == 2  # the lines still come, each with its error

    r = invoke("query", tmp_path / "blank.png", "--index", index)  # one photo: as it always was
    assert r.exit_code == 1 and r.stderr.startswith("Error: no face found in") and r.stdout == ""


def test_query_embeddings_answers_rows_as_the_photos_are_answered(faces, model_dir, index, tmp_path):
    invoke_json("embed", "--aligned", faces / "probes", "--model", model_dir, "--out", tmp_path / "shards")
    file = tmp_path / "shards" / "part-00000.parquet"

    rows = _lines(invoke("query", "--embeddings", file, "--index", index, "--jsonl"))
    photos = _lines(invoke("query", "--aligned", faces / "probes", "--index", index, "--jsonl"))

    assert len(rows) == len(photos) == ENROLLED + STRANGERS
    assert [row["row"] for row in rows] == list(range(len(rows)))
    assert [str(faces / "probes" / row["path"]) for row in rows] == [p["image"] for p in photos]
    for row, photo in zip(rows, photos):
        assert (row["index"], row["model"], row["threshold"]) == (photo["index"], photo["model"], photo["threshold"])
        _same_faces(row["faces"], photo["faces"])

    bare = tmp_path / "bare.parquet"  # only the vectors: no path, no card beside it
    pq.write_table(pq.read_table(file, columns=["embedding"]), bare)
    answers = _lines(invoke("query", "--embeddings", bare, "--index", index, "--jsonl"))
    assert "path" not in answers[0]
    _same_faces([a["faces"][0] for a in answers], [row["faces"][0] for row in rows])


def test_query_embeddings_refuses_bad_rows_and_other_models(faces, model_dir, other_model_dir, index, tmp_path):
    v = np.random.default_rng(0).normal(size=(3, 128)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v[1] *= 3
    pq.write_table(pa.table({"embedding": [list(map(float, r)) for r in v]}), tmp_path / "loose.parquet")
    r = invoke("query", "--embeddings", tmp_path / "loose.parquet", "--index", index, "--jsonl")
    assert r.exit_code == 1 and r.stdout == "", r.output
    assert f"Error: '{tmp_path / 'loose.parquet'}' row 1: the embedding's L2 norm is 3" in r.stderr

    pq.write_table(pa.table({"embedding": [[0.6, 0.8]]}), tmp_path / "short.parquet")
    r = invoke("query", "--embeddings", tmp_path / "short.parquet", "--index", index)
    assert r.exit_code == 1 and "row 0: the embedding has 2 values; the index holds 128-d vectors" in r.stderr

    invoke_json("embed", "--aligned", faces / "probes", "--model", other_model_dir, "--out", tmp_path / "other")
    r = invoke("query", "--embeddings", tmp_path / "other" / "part-00000.parquet", "--index", index)
    assert r.exit_code == 1 and "Error: index was built with model" in r.stderr and "this query uses" in r.stderr

    r = invoke("query", faces / "probes" / "id_01" / "033.png", "--embeddings", tmp_path / "short.parquet",
               "--index", index)
    assert r.exit_code == 2 and "not both" in r.output
    r = invoke("query", "--index", index)
    assert r.exit_code == 2 and "--embeddings FILE" in r.output


def test_query_embeddings_does_no_image_work(faces, model_dir, index, tmp_path):
    invoke_json("embed", "--aligned", faces / "probes" / "id_03", "--model", model_dir, "--out", tmp_path / "s")
    script = textwrap.dedent(f"""
        import sys
        from facesearch.cli.main import app
        try:
            app(["query", "--embeddings", {str(tmp_path / "s" / "part-00000.parquet")!r}, "--index", {str(index)!r},
                 "--jsonl"])
        except SystemExit as e:
            assert not e.code, e.code
        loaded = sorted(m for m in sys.modules if m in ("facesearch.embedder.runtime", "facesearch.embedder.detect", "onnxruntime",
                                                        "tensorflow"))
        print("LOADED", loaded)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout, out.stdout
    first = json.loads(out.stdout.splitlines()[0])
    assert first["row"] == 0 and first["path"] == "033.png" and len(first["faces"][0]["matches"]) == 5
