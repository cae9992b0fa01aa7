"""Bad input, crashes during a save, other models, damaged index directories."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from index_fakes import PixelEmbedder, write_photo

from facesearch.embedder.core.errors import (
    DatasetError,
    FaceSearchError,
    ImageReadError,
    IndexFormatError,
    IndexMismatchError,
)
from facesearch.index import GalleryIndex, build_index
from facesearch.index.storage.generation import build_lock

QUERY = np.random.default_rng(99).standard_normal((4, 16)).astype(np.float32)


def _snapshot(index_dir: Path) -> tuple:
    """Everything a reader sees: generation, records and search results."""
    with GalleryIndex.open(index_dir) as g:
        ids = g.ids()
        scores, found = g.search(QUERY / np.linalg.norm(QUERY, axis=1, keepdims=True), 5)
        return g.manifest.generation, g.records(ids), scores.tolist(), found.tolist()


def _add_bad_files(root: Path, rng) -> None:
    for identity in ("alice", "bob", "carol"):
        (root / identity).mkdir(parents=True, exist_ok=True)
    (root / "alice" / "text.jpg").write_text("this is not an image")
    jpeg = write_photo(root / "bob" / "truncated.jpg", rng, size=64)
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    (root / "carol" / "zero.png").write_bytes(b"")


# --- bad input -------------------------------------------------------------------------------

def test_missing_file_and_empty_folders_are_dataset_errors(tmp_path, embedder):
    with pytest.raises(DatasetError, match="'.*nowhere' does not exist"):
        build_index(tmp_path / "nowhere", tmp_path / "idx", embedder)
    (tmp_path / "file.jpg").write_bytes(b"x")
    with pytest.raises(DatasetError, match="'.*file.jpg' is not a folder"):
        build_index(tmp_path / "file.jpg", tmp_path / "idx", embedder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files .* in '.*empty'"):
        build_index(tmp_path / "empty", tmp_path / "idx", embedder)
    (tmp_path / "docs" / "a").mkdir(parents=True)
    (tmp_path / "docs" / "a" / "notes.txt").write_text("hi")
    with pytest.raises(DatasetError, match=r"\(1 other files ignored\)"):
        build_index(tmp_path / "docs", tmp_path / "idx", embedder)
    assert not (tmp_path / "idx").exists()


def test_unreadable_files_are_skipped_counted_and_retried(tmp_path, gallery, embedder, model_dir, rng):
    _add_bad_files(gallery, rng)
    report = build_index(gallery, tmp_path / "idx", embedder)
    assert [p for p, _ in report.skipped] == ["alice/text.jpg", "bob/truncated.jpg", "carol/zero.png"]
    assert all(reason for _, reason in report.skipped)
    assert (report.total_files, report.added, report.vectors) == (12, 9, 9)
    # still unreadable next time: reported again (they are not remembered as indexed)
    emb = PixelEmbedder(model_dir)
    again = build_index(gallery, tmp_path / "idx", emb)
    assert [p for p, _ in again.skipped] == [p for p, _ in report.skipped] and not again.written
    assert len(emb.read) == 3 and again.unchanged == 9


def test_strict_raises_on_first_bad_file_and_keeps_previous_index(tmp_path, gallery, embedder, model_dir, rng):
    build_index(gallery, tmp_path / "idx", embedder)
    before = _snapshot(tmp_path / "idx")
    files = sorted(os.listdir(tmp_path / "idx"))
    write_photo(gallery / "alice" / "fine.png", rng)
    _add_bad_files(gallery, rng)
    with pytest.raises(ImageReadError, match="alice/text.jpg"):
        build_index(gallery, tmp_path / "idx", PixelEmbedder(model_dir), strict=True)
    assert _snapshot(tmp_path / "idx") == before
    assert sorted(os.listdir(tmp_path / "idx")) == files


def test_all_files_failing_never_replaces_a_good_index(tmp_path, gallery, embedder, rng):
    build_index(gallery, tmp_path / "idx", embedder)
    before = _snapshot(tmp_path / "idx")
    bad = tmp_path / "bad"
    bad.mkdir()
    _add_bad_files(bad, rng)
    with pytest.raises(DatasetError, match="no face vectors .*: 3 unreadable .*any previous index is unchanged"):
        build_index(bad, tmp_path / "idx", embedder)
    assert _snapshot(tmp_path / "idx") == before
    with pytest.raises(DatasetError, match="no face vectors"):
        build_index(bad, tmp_path / "fresh", embedder)
    assert not (tmp_path / "fresh" / "manifest.json").exists()


# --- writers ---------------------------------------------------------------------------------

def test_second_concurrent_build_is_refused(tmp_path, gallery, embedder):
    with build_lock((tmp_path / "idx").resolve()):
        with pytest.raises(FaceSearchError, match="another build is writing the index"):
            build_index(gallery, tmp_path / "idx", embedder)


# --- another model ---------------------------------------------------------------------------

def test_other_model_is_refused_for_queries_and_builds(tmp_path, gallery, model_dir):
    build_index(gallery, tmp_path / "idx", PixelEmbedder(model_dir, name="mfn-112x96"))
    before = _snapshot(tmp_path / "idx")
    other = PixelEmbedder(model_dir, name="dlib-resnet", seed=1)
    with pytest.raises(IndexMismatchError) as e:
        GalleryIndex.open(tmp_path / "idx", card=other.card)
    assert str(e.value) == ("index was built with model 'mfn-112x96' (16-d); this query uses 'dlib-resnet' (16-d)"
                            " - pass --model or rebuild")
    with GalleryIndex.open(tmp_path / "idx") as g:
        with pytest.raises(IndexMismatchError, match="'mfn-112x96' .* 'dlib-resnet'"):
            g.check_model(other.card)
        g.check_model(PixelEmbedder(model_dir, name="mfn-112x96").card)

    with pytest.raises(IndexMismatchError, match=r"this build uses 'dlib-resnet' \(16-d\) - pass --rebuild"):
        build_index(gallery, tmp_path / "idx", other)
    assert _snapshot(tmp_path / "idx") == before

    report = build_index(gallery, tmp_path / "idx", other, rebuild=True)
    assert report.rebuilt and report.added == 9 and report.generation == 2
    with GalleryIndex.open(tmp_path / "idx", card=other.card) as g:
        assert g.card.name == "dlib-resnet" and g.manifest.next_id == 18  # ids continue, never reused


def test_same_name_other_weights_is_another_model(tmp_path, gallery, model_dir):
    build_index(gallery, tmp_path / "idx", PixelEmbedder(model_dir, name="mfn", onnx_sha256="a" * 64))
    with pytest.raises(IndexMismatchError):
        GalleryIndex.open(tmp_path / "idx", card=PixelEmbedder(model_dir, name="mfn", onnx_sha256="b" * 64).card)


# --- damaged index directories ---------------------------------------------------------------

def _manifest(index_dir: Path) -> dict:
    return json.loads((index_dir / "manifest.json").read_text())


def _write_manifest(index_dir: Path, m: dict) -> None:
    (index_dir / "manifest.json").write_text(json.dumps(m))


def test_missing_index_or_manifest(tmp_path):
    with pytest.raises(IndexFormatError, match="no index at .* does not exist - build one with `facesearch build-in"):
        GalleryIndex.open(tmp_path / "nothing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(IndexFormatError, match="the path is not a directory"):
        GalleryIndex.open(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexFormatError, match="holds no manifest.json"):
        GalleryIndex.open(tmp_path / "empty")


@pytest.mark.parametrize("damage, message", [
    ("garbage manifest", "is not valid JSON"),
    ("unknown version", "format version 99; this facesearch reads version 2"),
    ("missing field", "is damaged .*KeyError"),
    ("file outside", "is damaged .*bad file name"),
    ("missing vectors", "seg-000000.vectors.npy' named by the manifest is missing"),
    ("garbage vectors", "segment 0 in .* is damaged"),
    ("wrong shape", "segment 0 .* does not match the manifest: its vectors are float32 \\(8, 16\\)"),
    ("garbage metadata", "metadata file .* is damaged"),
    ("count in manifest", "segments hold 9 vectors, 0 of them removed, but it counts 10 faces"),
    ("metadata row gone", "9 vectors but 8 metadata rows"),
])
def test_damaged_index_is_a_format_error(tmp_path, gallery, embedder, damage, message):
    idx = tmp_path / "idx"
    build_index(gallery, idx, embedder)
    m = _manifest(idx)
    if damage == "garbage manifest":
        (idx / "manifest.json").write_text("{not json")
    elif damage == "unknown version":
        _write_manifest(idx, {**m, "format_version": 99})
    elif damage == "missing field":
        del m["next_id"]
        _write_manifest(idx, m)
    elif damage == "file outside":
        _write_manifest(idx, {**m, "metadata": "../elsewhere.sqlite"})
    elif damage == "missing vectors":
        (idx / "seg-000000.vectors.npy").unlink()
    elif damage == "garbage vectors":
        (idx / "seg-000000.vectors.npy").write_bytes(b"\x00garbage" * 10)
    elif damage == "wrong shape":
        np.save(idx / "seg-000000.vectors.npy", np.zeros((8, 16), np.float32))
    elif damage == "garbage metadata":
        (idx / "meta-000001.sqlite").write_bytes(b"not sqlite at all" * 100)
    elif damage == "count in manifest":
        _write_manifest(idx, {**m, "counts": {**m["counts"], "faces": 10}})
    else:
        conn = sqlite3.connect(idx / "meta-000001.sqlite")
        with conn:
            conn.execute("DELETE FROM faces WHERE id = 0")
        conn.close()
    with pytest.raises(IndexFormatError, match=message) as e:
        GalleryIndex.open(idx)
    if damage != "missing field":
        assert "facesearch build-index" in str(e.value) and f"--index {idx.resolve()}" in str(e.value)
    # a build refuses to update a damaged index unless told to replace it
    with pytest.raises(IndexFormatError, match="pass --rebuild"):
        build_index(gallery, idx, embedder)
    report = build_index(gallery, idx, embedder, rebuild=True)
    assert report.rebuilt and report.vectors == 9
    with GalleryIndex.open(idx) as g:
        assert len(g) == 9


def test_index_package_never_imports_tensorflow():
    code = ("import sys, facesearch.index, facesearch.index.sync.build, facesearch.index.storage.gallery, facesearch.index.openset.ranking, facesearch.index.sync.scan, facesearch.index.storage.store, "
            "facesearch.embedder.pipeline, facesearch.index.storage.generation, facesearch.index.storage.manifest\n"
            "assert not any(m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx') for m in sys.modules), "
            "sorted(m for m in sys.modules if 'tensorflow' in m)[:5]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
