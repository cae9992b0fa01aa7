"""Fixtures of the API tests: a folder laid out as docs/api.md's examples expect, the default model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def workdir(photos, default_model, tmp_path, monkeypatch) -> Path:
    """A folder holding photos/<person>/<photo>, ada.jpg, group.jpg, a.jpg and b.jpg; the current directory.

    photos/eileen/astronaut.jpg and photos/cameraman/camera.png are the gallery; a.jpg and b.jpg are
    the astronaut and her mirror image (the same person), ada.jpg the mirror image too, group.jpg both
    people side by side. $FACESEARCH_MODEL names the default model's folder (nothing is converted).
    """
    (tmp_path / "photos" / "eileen").mkdir(parents=True)
    (tmp_path / "photos" / "cameraman").mkdir()
    shutil.copy(photos / "astronaut.jpg", tmp_path / "photos" / "eileen" / "astronaut.jpg")
    shutil.copy(photos / "camera.png", tmp_path / "photos" / "cameraman" / "camera.png")
    for name, source in (("a.jpg", "astronaut.jpg"), ("b.jpg", "astronaut_flip.jpg"), ("ada.jpg", "astronaut_flip.jpg"),
                         ("group.jpg", "group.jpg"), ("no_face.png", "no_face.png")):
        shutil.copy(photos / source, tmp_path / name)
    monkeypatch.setenv("FACESEARCH_MODEL", str(default_model))
    monkeypatch.chdir(tmp_path)
    return tmp_path
