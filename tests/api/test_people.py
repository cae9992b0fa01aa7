"""Time to a named gallery, on real faces: unlabelled photos -> people -> name one -> `search` names them.

The photos are scikit-image's (the astronaut Eileen Collins, the cameraman), as sent in several
forms; `group.jpg` shows both side by side: its two faces must land in two people. What the
grouping must give is worked out by hand: every astronaut face in one person, every cameraman face
in another.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

import facesearch
from facesearch.embedder.core.errors import (
    FaceNotFoundError,
    IdentityNameError,
    IndexFormatError,
    PeopleError,
    PersonNotFoundError,
)
from facesearch.index import read_manifest


@pytest.fixture
def family(photos, tmp_path):
    """An unlabelled folder (no identity in the layout): 3 photos of the astronaut, 1 of the cameraman,
    the two together, a cup; and a held-out photo of the astronaut outside it."""
    root = tmp_path / "family"
    (root / "2019" / "trip").mkdir(parents=True)
    shutil.copy(photos / "astronaut.jpg", root / "2019" / "trip" / "IMG_0001.jpg")
    shutil.copy(photos / "astronaut_flip.jpg", root / "IMG_0002.jpg")
    with Image.open(photos / "astronaut.jpg") as im:
        im.resize((384, 384), Image.Resampling.LANCZOS).save(root / "2019" / "small.png")
        im.convert("L").save(tmp_path / "held_out.png")
    shutil.copy(photos / "camera.png", root / "IMG_0003.png")
    shutil.copy(photos / "group.jpg", root / "2019" / "group.jpg")
    shutil.copy(photos / "no_face.png", root / "cup.png")
    return root


def groups_by_photo(people) -> list[set[tuple[str, int]]]:
    return [{(f.path.rsplit("/", 1)[-1], f.face) for f in p.faces} for p in people]


def test_time_to_a_named_gallery(family, default_model, tmp_path):
    gallery = facesearch.open(tmp_path / "idx", model=default_model)
    report = gallery.add(family, labeled=False)
    assert report.added == 6 and report.no_face == 1 and report.multi_face == 1
    assert report.vectors == 6 and report.identities == 0
    # Before naming, nobody is answered: the faces have no identity.
    assert gallery.search(tmp_path / "held_out.png").faces[0].identity is None

    people = gallery.people()
    assert people.grouped == 6 and people.threshold is not None
    # In the group photo the astronaut is on the left half (512 px wide), the cameraman on the right;
    # their numbers are those `search` gives them.
    searched = gallery.search(family / "2019" / "group.jpg")
    left = next(n for n, f in enumerate(searched.faces, 1) if f.box[2] <= 512)
    assert groups_by_photo(people) == [
        {("IMG_0001.jpg", 1), ("IMG_0002.jpg", 1), ("small.png", 1), ("group.jpg", left)},
        {("IMG_0003.png", 1), ("group.jpg", 3 - left)},
    ]
    assert [p.person for p in people] == ["person-0001", "person-0002"] and people.unclustered == ()
    d = people.to_dict()
    assert set(d) == {"people", "unclustered"}
    assert set(d["people"][0]) >= {"person", "faces"} and set(d["people"][0]["faces"][0]) >= {"path", "face", "box"}
    group_boxes = {f.face: f.box for p in people for f in p.faces if f.path.endswith("group.jpg")}
    for n, face in enumerate(searched.faces, 1):  # face N of `people` is face N of `search`
        np.testing.assert_allclose(face.box, group_boxes[n], atol=1e-3)

    change = gallery.name("person-0001", "Eileen Collins")
    assert (change.person, change.name, change.faces) == ("person-0001", "Eileen Collins", 4)
    answer = gallery.search(tmp_path / "held_out.png").faces[0]
    assert answer.identity == "Eileen Collins", answer
    cameraman = gallery.search(family / "IMG_0003.png").faces[0]
    assert cameraman.identity is None and all(m.identity == "Eileen Collins" for m in cameraman.matches)

    # Bad input: a clear error, nothing written.
    generation = read_manifest(tmp_path / "idx").generation
    with pytest.raises(PersonNotFoundError, match="person-0009"):
        gallery.name("person-0009", "X")
    with pytest.raises(IdentityNameError):
        gallery.name("person-0002", "")
    with pytest.raises(PeopleError, match="itself"):
        gallery.merge("person-0002", "person-0002")
    with pytest.raises(FaceNotFoundError):
        gallery.move(987654)
    with pytest.raises(PeopleError, match="two faces of one photo"):
        gallery.merge("person-0001", "person-0002")
    assert read_manifest(tmp_path / "idx").generation == generation

    # The cameraman's photo on its own leaves his person; it stays alone after a recluster.
    lone = next(f for f in people.people[1].faces if f.path.endswith("IMG_0003.png"))
    gallery.move(lone.id)
    again = gallery.people(recluster=True)
    other = next(f for f in people.people[1].faces if f.path.endswith("group.jpg"))
    assert {f.id for f in again.unclustered} == {lone.id, other.id}  # one face left: a group of one is no person
    assert [(p.name, len(p.faces)) for p in again] == [("Eileen Collins", 4)]
    # Removing the identity takes the name away, not the photos: the person stays, unnamed, and unanswered.
    removal = gallery.remove("Eileen Collins")
    assert removal.faces_removed == 4 and removal.photos_removed == 0
    assert gallery.search(tmp_path / "held_out.png").faces[0].identity is None
    assert [(p.name, len(p.faces)) for p in gallery.people()] == [(None, 4)]


def test_people_without_an_index_is_an_error(tmp_path):
    with pytest.raises(IndexFormatError, match="not an index yet"):
        facesearch.open(tmp_path / "nothing").people()
    assert not (tmp_path / "nothing").exists()
