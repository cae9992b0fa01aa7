"""The CLI on a Milvus gallery: build-index (photos and --from-embeddings), query (one photo, --embeddings,
--jsonl), remove; the same answers as an index folder; `facesearch --help` never loads pymilvus."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from clitools import invoke, invoke_json

from facesearch.embedder.core.model_card import ModelCard

pytest.importorskip("pymilvus", reason="the Milvus gallery needs pymilvus: pip install 'facesearch[milvus]'")
pytest.importorskip("milvus_lite", reason="the Milvus tests run Milvus Lite: pip install 'facesearch[milvus]'")

DIM = 8
CARD = ModelCard(name="synthetic-8", input_height=8, input_width=8, embedding_size=DIM, alignment_template="none")


def _shards(folder: Path, rng: np.random.Generator, identities: int = 12, per: int = 3) -> tuple[Path, np.ndarray]:
    from facesearch.embedder.embedding_shards import EmbeddingRows
    from facesearch.embedder.embedding_shards.writer import ShardWriter

    v = np.repeat(rng.standard_normal((identities, DIM)), per, 0) + 0.3 * rng.standard_normal((identities * per, DIM))
    v = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)
    paths = [f"id{i:02d}/{j}.jpg" for i in range(identities) for j in range(per)]
    with ShardWriter(folder, CARD) as w:
        w.write(EmbeddingRows(paths, [p.split("/")[0] for p in paths], np.zeros(len(paths), np.int32), v,
                              [None] * len(paths)))
    return folder, v


def _answers(index: str | Path, queries: Path) -> list:
    r = invoke("query", "--embeddings", queries, "--index", index, "-k", "3", "--jsonl")
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    return [[(m["identity"], m["path"], round(m["score"], 5)) for m in line["faces"][0]["matches"]] for line in lines]


def test_from_embeddings_query_and_remove_answer_as_an_index_folder_does(tmp_path):
    rng = np.random.default_rng(3)
    shards, v = _shards(tmp_path / "shards", rng)
    milvus = f"milvus-lite:{tmp_path / 'g.db'}#gallery"
    report = invoke_json("build-index", "--from-embeddings", shards, "--index", milvus, "--index-type", "flat")
    assert (report["added"], report["vectors"], report["identities"], report["index_types"]) == (36, 36, 12, ["FLAT"])
    assert report["index_dir"] == milvus
    invoke_json("build-index", "--from-embeddings", shards, "--index", tmp_path / "folder.idx")
    queries = next(shards.glob("*.parquet"))
    assert _answers(milvus, queries) == _answers(tmp_path / "folder.idx", queries)

    first = json.loads(invoke("query", "--embeddings", queries, "--index", milvus, "--jsonl").stdout.splitlines()[0])
    face = first["faces"][0]["matches"][0]
    assert first["index"] == milvus and face["path"] == "id00/0.jpg"
    removed = invoke_json("remove", "--face", str(face["id"]), "--index", milvus)
    assert (removed["faces_removed"], removed["generation"]) == (1, 2)
    for args in (["id03"], ["--photo", "id04/1.jpg"]):
        invoke_json("remove", *args, "--index", milvus)
        invoke_json("remove", *args, "--index", tmp_path / "folder.idx")
    invoke_json("remove", "--face", str(face["id"]), "--index", tmp_path / "folder.idx")
    assert _answers(milvus, queries) == _answers(tmp_path / "folder.idx", queries)
    r = invoke("remove", "id03", "--index", milvus)
    assert r.exit_code == 1 and r.stderr.startswith("Error: no photo of identity 'id03'"), r.output


def test_the_index_variable_takes_a_milvus_address(tmp_path, monkeypatch):
    shards, _ = _shards(tmp_path / "shards", np.random.default_rng(4), identities=4)
    monkeypatch.setenv("FACESEARCH_INDEX", f"milvus-lite:{tmp_path / 'env.db'}")
    assert invoke_json("build-index", "--from-embeddings", shards)["index_dir"] == f"milvus-lite:{tmp_path / 'env.db'}#faces"
    r = invoke("query", "--embeddings", next(shards.glob("*.parquet")), "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["answered"] == 12, r.output


def test_real_photos_through_the_default_model(default_model, photos, tmp_path, monkeypatch):
    monkeypatch.setenv("FACESEARCH_MODEL", str(default_model))
    gallery = tmp_path / "gallery"
    for name, file in (("astronaut", "astronaut.jpg"), ("cameraman", "camera.png")):
        (gallery / name).mkdir(parents=True)
        shutil.copy(photos / file, gallery / name / file)
    milvus = f"milvus-lite:{tmp_path / 'photos.db'}"
    built = invoke_json("build-index", gallery, "--index", milvus, "--index-type", "flat")
    assert (built["added"], built["vectors"], built["model"]) == (2, 2, "dlib-resnet-v1")
    again = invoke_json("build-index", gallery, "--index", milvus)
    assert (again["unchanged"], again["written"]) == (2, False)
    invoke_json("build-index", gallery, "--index", tmp_path / "folder.idx")
    mine = invoke_json("query", photos / "astronaut_flip.jpg", "--index", milvus)["faces"][0]
    theirs = invoke_json("query", photos / "astronaut_flip.jpg", "--index", tmp_path / "folder.idx")["faces"][0]
    assert mine["verdict"] == theirs["verdict"] == "astronaut"
    np.testing.assert_allclose([m["score"] for m in mine["matches"]], [m["score"] for m in theirs["matches"]],
                               rtol=1e-5)


def test_help_and_import_never_load_pymilvus():
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[2]),
                                                                    os.environ.get("PYTHONPATH")]))}
    script = ("import sys, facesearch\n"
              "from facesearch.cli.main import app\n"
              "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
              "print(sorted(m for m in sys.modules if m.startswith(('pymilvus', 'milvus_lite'))))")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
