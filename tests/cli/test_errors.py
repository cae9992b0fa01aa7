"""Bad input through the CLI: a clear `Error:` and exit 1, or a counted skip; nothing stored is lost."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from clitools import ENROLLED, invoke, invoke_json
from PIL import Image


@pytest.fixture
def gallery(faces, tmp_path):
    folder = tmp_path / "gallery"
    shutil.copytree(faces / "gallery", folder)
    return folder


@pytest.fixture
def index(gallery, model_dir, tmp_path):
    path = tmp_path / "index"
    invoke_json("build-index", "--aligned", gallery, "--model", model_dir, "--index", path)
    return path


def _answer(index, faces, identity="id_04"):
    return invoke_json("query", "--aligned", faces / "probes" / identity / "033.png", "--index", index)["faces"][0]


def _fails(*args, match):
    r = invoke(*args)
    assert r.exit_code == 1, r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and match in errors[0], r.stderr
    return r


def test_missing_and_empty_folders(model_dir, tmp_path):
    _fails("build-index", "--aligned", tmp_path / "absent", "--model", model_dir, "--index", tmp_path / "i", match="absent")
    (tmp_path / "empty").mkdir()
    _fails("build-index", "--aligned", tmp_path / "empty", "--model", model_dir, "--index", tmp_path / "i", match="empty")
    assert not (tmp_path / "i" / "manifest.json").exists()


def _add_bad_files(gallery):
    (gallery / "id_00" / "zero.jpg").write_bytes(b"")
    (gallery / "id_00" / "notes.png").write_bytes(b"not an image at all")
    buf = io.BytesIO()
    Image.fromarray(np.full((112, 96, 3), 128, np.uint8)).save(buf, format="JPEG")
    (gallery / "id_01" / "cut.jpg").write_bytes(buf.getvalue()[:200])


def test_unreadable_files_are_skipped_counted_and_listed(gallery, index, faces):
    before = _answer(index, faces)
    _add_bad_files(gallery)
    report = invoke_json("build-index", "--aligned", gallery, "--index", index)
    skipped = {item["path"]: item["reason"] for item in report["skipped"]}
    assert set(skipped) == {"id_00/zero.jpg", "id_00/notes.png", "id_01/cut.jpg"}
    assert "empty" in skipped["id_00/zero.jpg"] and "truncated" in skipped["id_01/cut.jpg"]
    assert report["vectors"] == 3 * ENROLLED
    assert _answer(index, faces) == before

    r = invoke("build-index", "--aligned", gallery, "--index", index)  # the text report lists them too
    assert r.exit_code == 0 and "skipped 3 unreadable file(s)" in r.stdout and "id_01/cut.jpg" in r.stdout


def test_strict_makes_a_bad_file_fatal_and_keeps_the_index(gallery, index, faces):
    before = _answer(index, faces)
    manifest = (index / "manifest.json").read_bytes()
    _add_bad_files(gallery)
    shutil.copy(faces / "probes" / "id_02" / "033.png", gallery / "id_02" / "new.png")
    _fails("build-index", "--aligned", gallery, "--index", index, "--strict", match="cannot read image")
    assert (index / "manifest.json").read_bytes() == manifest
    assert _answer(index, faces) == before


def test_unreadable_query_image(index, tmp_path):
    (tmp_path / "q.jpg").write_bytes(b"\xff\xd8\xff garbage")
    _fails("query", "--aligned", tmp_path / "q.jpg", "--index", index, match="q.jpg")
    _fails("query", "--aligned", tmp_path / "absent.jpg", "--index", index, match="no such file")


def test_missing_index(tmp_path, faces):
    _fails("query", "--aligned", faces / "probes" / "id_00" / "033.png", "--index", tmp_path / "nothing", match="build-index")


def test_index_of_another_model_is_refused(gallery, index, faces, other_model_dir):
    before = _answer(index, faces)
    probe = faces / "probes" / "id_04" / "033.png"
    r = _fails("query", "--aligned", probe, "--index", index, "--model", other_model_dir, match="pass --model or rebuild")
    assert "index was built with model" in r.stderr
    _fails("build-index", "--aligned", gallery, "--index", index, "--model", other_model_dir, match="rebuild")
    assert _answer(index, faces) == before  # still loadable, unchanged

    rebuilt = invoke_json("build-index", "--aligned", gallery, "--index", index, "--model", other_model_dir, "--rebuild")
    assert rebuilt["rebuilt"] and rebuilt["vectors"] == 3 * ENROLLED
    assert invoke_json("query", "--aligned", probe, "--index", index)["model"] == json.loads(
        (other_model_dir / "model_card.json").read_text())["name"]


def test_no_model_anywhere(gallery, tmp_path, monkeypatch):
    monkeypatch.delenv("FACESEARCH_MODEL", raising=False)
    # No default model in the cache, and none to convert: its weight package "is not installed".
    monkeypatch.setenv("FACESEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("facesearch.embedder.dlib.weights.WEIGHTS_PACKAGES", ("no_such_package",))
    _fails("build-index", "--aligned", gallery, "--index", tmp_path / "i", match="no model given")


def test_export_refuses_a_missing_checkpoint(tmp_path):
    _fails("export", tmp_path / "nope.keras", "--out", tmp_path / "m", match="nope.keras")


def test_photo_demo_needs_people_with_two_photos(tmp_path):
    (tmp_path / "photos" / "solo").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "photos" / "solo" / "a.jpg")
    _fails("demo", "--workdir", tmp_path / "w", "--photos", tmp_path / "photos", match="2 or more photos")
    _fails("demo", "--workdir", tmp_path / "w", "--photos", tmp_path / "absent", match="not a folder")
