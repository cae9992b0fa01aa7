"""Unlabelled photos in an index and the people kept among their faces (facesearch.index.sync.people).

The vectors are chosen (a `TableEmbedder`): three people as tight bundles around orthogonal-ish
centres, a stranger, and a photo with two faces of one person. What the index must do is worked out
by hand from that table; searches are checked against a numpy brute force over the labelled faces.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from index_fakes import SIZE, TableEmbedder, write_photo
from PIL import Image

import facesearch.index.storage.writer
from facesearch.embedder.core.errors import (
    DatasetError,
    FaceNotFoundError,
    IdentityNameError,
    PeopleError,
    PersonNotFoundError,
)
from facesearch.index import GalleryIndex, build_index, open_writer, rank_identities
from facesearch.index.storage.store import UNLABELED
from facesearch.index.sync import people as P

DIM = 64  # random directions in 64-d score about 0 +- 0.13 against each other: far below the threshold
THRESHOLD = 0.6  # the card's pair calibration: the linking threshold clustering uses


def table(seed: int = 7) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Rows 0-9: labelled alice/bob/carol; 10-19 person A; 20-29 person B; 30-39 person C; 50-52 alice
    again; the other rows from 40 on strangers."""
    rng = np.random.default_rng(seed)
    centres = {n: rng.standard_normal(DIM) for n in ("alice", "bob", "carol", "A", "B", "C")}
    rows = np.zeros((64, DIM))
    for base, n in ((0, "alice"), (3, "bob"), (6, "carol")):
        for i in range(3 if n != "carol" else 4):
            rows[base + i] = centres[n] + 0.05 * rng.standard_normal(DIM)
    for base, n in ((10, "A"), (20, "B"), (30, "C")):
        for i in range(10):
            rows[base + i] = centres[n] + 0.05 * rng.standard_normal(DIM)
    for i in range(40, 64):
        rows[i] = rng.standard_normal(DIM)
    for i in range(50, 53):  # unlabelled photos of alice
        rows[i] = centres["alice"] + 0.05 * rng.standard_normal(DIM)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows.astype(np.float32), centres


def photo(path: Path, keys: list[int], rng) -> Path:
    """A photo of len(keys) faces side by side, face j's crop carrying key j in its pixel (0, 0)."""
    pixels = rng.integers(0, 256, (SIZE, SIZE * len(keys), 3), dtype=np.uint8)
    for j, key in enumerate(keys):
        pixels[0, j * SIZE] = (key // 256, key % 256, 7)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def setup(tmp_path, model_dir):
    rows, _ = table()
    rng = np.random.default_rng(3)
    emb = TableEmbedder(model_dir, rows)
    emb.card = dataclasses.replace(emb.card, thresholds={"best_accuracy": THRESHOLD})
    labelled = tmp_path / "gallery"
    for key, name in [(0, "alice"), (1, "alice"), (2, "alice"), (3, "bob"), (4, "bob"), (5, "bob"),
                      (6, "carol"), (7, "carol"), (8, "carol"), (9, "carol")]:
        write_photo(labelled / name / f"{key}.png", rng, key=key)
    family = tmp_path / "family"
    layout = {"2019/a1.png": [10], "2019/a2.png": [11], "a3.png": [12], "deep/er/a4.png": [13],
              "b1.png": [20], "trip/b2.png": [21], "trip/b3.png": [22],
              "c1.png": [30], "c2.png": [31], "x.png": [40], "al1.png": [50], "al2.png": [51],
              "group.png": [14, 15, 23]}  # two faces of A and one of B in one photo
    boxes = {}
    for rel, keys in layout.items():
        photo(family / rel, keys, rng)
        if len(keys) > 1:
            boxes[Path(rel).name] = [(j * SIZE, 0, (j + 1) * SIZE, SIZE) for j in range(len(keys))]
    emb.boxes = boxes
    idx = tmp_path / "idx"
    return {"emb": emb, "labelled": labelled, "family": family, "idx": idx, "rows": rows, "rng": rng,
            "layout": layout}


def built(setup):
    build_index(setup["labelled"], setup["idx"], setup["emb"])
    report = build_index(setup["family"], setup["idx"], setup["emb"], labeled=False)
    return report


def group(setup, recluster=False):
    with open_writer(setup["idx"], card=setup["emb"].card, model_dir=setup["emb"].model_dir) as w:
        P.stage_grouping(w, recluster=recluster)
        w.commit()
    return read(setup)


def read(setup) -> P.People:
    with GalleryIndex.open(setup["idx"]) as g:
        return P.read_people(g.store, g.vectors, g.card)


def keys_of(setup, faces) -> set[int]:
    """The table rows of faces (by photo path and face position)."""
    root = setup["family"].as_posix() + "/"
    return {setup["layout"][f.path.removeprefix(root)][f.face] for f in faces}


def person_with(people: P.People, key: int, setup) -> P.Group:
    return next(g for g in people.groups if key in keys_of(setup, g.faces))


def test_unlabelled_photos_share_the_index_and_are_never_answered(setup):
    report = built(setup)
    assert report.added == len(setup["layout"]) and report.multi_face == 1
    with GalleryIndex.open(setup["idx"]) as g:
        photos = g.store.photos(UNLABELED)
        assert set(photos) == {(setup["family"] / rel).as_posix() for rel in setup["layout"]}
        assert {p.identity for p in photos.values()} == {""}
        assert g.manifest.identities == 3 and g.manifest.faces == 10 + 15
        assert [x for x, _, _ in g.store.identities()] == ["alice", "bob", "carol"]
        labelled = sorted(i for i, _ in g.store.face_identities())
        assert len(labelled) == 10 and len(g.unidentified) == 15
        # A search returns only labelled faces: numpy brute force over the labelled vectors.
        q = setup["rows"][[10, 20, 0, 40]]
        scores, ids = g.search(q, 5)
        ref = np.array(labelled)[np.argsort(-(g.vectors(labelled) @ q.T), axis=0, kind="stable")[:5].T]
        np.testing.assert_array_equal(ids, ref)
        result = rank_identities(g, setup["rows"][10], k=3, threshold=0.5)
        assert result.verdict == "unknown" and {m.identity for m in result.matches} <= {"alice", "bob", "carol"}
    # An incremental build of either folder keeps the other's photos.
    again = build_index(setup["labelled"], setup["idx"], setup["emb"])
    assert again.removed == 0 and not again.written
    (setup["family"] / "x.png").unlink()
    again = build_index(setup["family"], setup["idx"], setup["emb"], labeled=False)
    assert again.removed == 1 and again.unchanged == len(setup["layout"]) - 1
    with GalleryIndex.open(setup["idx"]) as g:
        assert g.manifest.faces == 10 + 14 and g.manifest.identities == 3
    # A labelled build whose new face policy would start from an empty index refuses to drop them.
    with GalleryIndex.open(setup["idx"]) as g:
        generation = g.manifest.generation
    with pytest.raises(DatasetError, match="12 unlabelled photos"):
        build_index(setup["labelled"], setup["idx"], setup["emb"], faces="all")
    with GalleryIndex.open(setup["idx"]) as g:
        assert g.manifest.generation == generation and len(g.store.photos(UNLABELED)) == 12


def test_people_rules_naming_and_queries(setup):
    built(setup)
    people = group(setup)
    assert people.threshold == THRESHOLD
    with GalleryIndex.open(setup["idx"]) as g:  # new faces are assigned by the parameters recorded here
        assert g.manifest.people["threshold"] == THRESHOLD and g.manifest.people["k"] >= 1
    # Hand-worked from the table: A = 10..13 + one of 14/15, B = 20..23, C = 30, 31; stranger 40 alone.
    sizes = [len(g.faces) for g in people.groups]
    assert sizes == sorted(sizes, reverse=True)
    a, b, c = (person_with(people, k, setup) for k in (10, 20, 30))
    assert keys_of(setup, b.faces) == {20, 21, 22, 23}
    assert keys_of(setup, c.faces) == {30, 31}
    assert {10, 11, 12, 13} <= keys_of(setup, a.faces) and len(keys_of(setup, a.faces) & {14, 15}) == 1
    assert 40 in keys_of(setup, people.unclustered)
    everyone = [f.id for g in people.groups for f in g.faces] + [f.id for f in people.unclustered]
    assert len(everyone) == len(set(everyone)) == 15  # a face is in one person at most
    for g in people.groups:  # two faces of one photo never in one person
        paths = [f.path for f in g.faces]
        assert len(paths) == len(set(paths))
    assert people.groups[0].number == a.number  # biggest first: A has 5
    # A group that looks like a labelled identity is offered it, with its score, and not merged.
    al = person_with(people, 50, setup)
    assert keys_of(setup, al.faces) == {50, 51} and al.name is None
    assert al.suggestion[0] == "alice" and THRESHOLD <= al.suggestion[1] <= 1.0
    assert all(g.suggestion is None for g in people.groups if g is not al)

    # Naming makes the person an identity that queries find and the identity count includes.
    with open_writer(setup["idx"], card=setup["emb"].card, model_dir=setup["emb"].model_dir) as w:
        change = P.stage_name(w, P.person_id(a.number), "Ada Lovelace")
        w.commit()
    assert change.faces == 5 and change.joined is None
    with GalleryIndex.open(setup["idx"]) as g:
        assert g.manifest.identities == 4
        assert "Ada Lovelace" in [x for x, _, _ in g.store.identities()]
        result = rank_identities(g, setup["rows"][16], k=2, threshold=0.5)  # an unseen face of A
        assert result.verdict == "Ada Lovelace"
        assert result.matches[0].id in {f.id for f in a.faces}
    # The named person is offered to nobody; an unnamed person close to a named identity would be.
    people = read(setup)
    named = person_with(people, 10, setup)
    assert named.name == "Ada Lovelace" and named.suggestion is None


def test_incremental_recluster_keep_user_decisions(setup):
    built(setup)
    people = group(setup)
    a, b = person_with(people, 10, setup), person_with(people, 20, setup)
    moved = next(f for f in b.faces if keys_of(setup, [f]) == {22})
    with open_writer(setup["idx"], card=setup["emb"].card, model_dir=setup["emb"].model_dir) as w:
        P.stage_name(w, P.person_id(a.number), "Ada")
        P.stage_move(w, moved.id)  # out of B: stays alone from now on
        w.commit()
    # New photos: one of B joins B, one of A joins Ada (and so is found as Ada), a pair of new faces.
    rng = setup["rng"]
    for rel, keys in {"new/b4.png": [24], "new/a5.png": [16], "new/n1.png": [41], "new/n2.png": [42]}.items():
        photo(setup["family"] / rel, keys, rng)
        setup["layout"][rel] = keys
    build_index(setup["family"], setup["idx"], setup["emb"], labeled=False)
    people = group(setup)
    b2 = person_with(people, 20, setup)
    assert b2.number == b.number and keys_of(setup, b2.faces) == {20, 21, 23, 24}
    ada = person_with(people, 10, setup)
    assert ada.number == a.number and ada.name == "Ada" and 16 in keys_of(setup, ada.faces)
    assert 22 in keys_of(setup, people.unclustered)
    with GalleryIndex.open(setup["idx"]) as g:
        assert rank_identities(g, setup["rows"][17], k=1, threshold=0.5).verdict == "Ada"
    # A recluster starts over but keeps the name and the move.
    people = group(setup, recluster=True)
    ada = person_with(people, 10, setup)
    assert ada.name == "Ada" and {10, 11, 12, 13, 16} <= keys_of(setup, ada.faces)
    assert 22 in keys_of(setup, people.unclustered)
    assert keys_of(setup, person_with(people, 20, setup).faces) == {20, 21, 23, 24}


def test_merge_move_and_bad_input_change_nothing(setup):
    built(setup)
    people = group(setup)
    a, b, c = (person_with(people, k, setup) for k in (10, 20, 30))
    before = (setup["idx"] / "manifest.json").read_text()
    card, model = setup["emb"].card, setup["emb"].model_dir
    group_face = next(f for f in a.faces if keys_of(setup, [f]) & {14, 15})
    bad = [
        (lambda w: P.stage_name(w, "person-0999", "X"), PersonNotFoundError, "no person 'person-0999'"),
        (lambda w: P.stage_name(w, "someone", "X"), PersonNotFoundError, "not a person id"),
        (lambda w: P.stage_name(w, P.person_id(a.number), ""), IdentityNameError, "not allowed"),
        (lambda w: P.stage_merge(w, P.person_id(a.number), P.person_id(a.number)), PeopleError, "with itself"),
        (lambda w: P.stage_move(w, 10_000), FaceNotFoundError, "no face 10000"),
        (lambda w: P.stage_move(w, 0), FaceNotFoundError, "no face 0"),  # a labelled face
        (lambda w: P.stage_move(w, group_face.id, P.person_id(b.number)), PeopleError, "two faces of one photo"),
        (lambda w: P.stage_merge(w, P.person_id(a.number), P.person_id(b.number)), PeopleError, "two faces of one photo"),
    ]
    for stage, kind, text in bad:
        with open_writer(setup["idx"], card=card, model_dir=model) as w:
            with pytest.raises(kind, match=text):
                stage(w)
            assert w.commit().written is False
    assert (setup["idx"] / "manifest.json").read_text() == before
    with open_writer(setup["idx"], card=card, model_dir=model) as w:
        change = P.stage_merge(w, P.person_id(b.number), P.person_id(c.number))
        w.commit()
    assert change.faces == 6
    people = read(setup)
    assert keys_of(setup, person_with(people, 30, setup).faces) == {20, 21, 22, 23, 30, 31}
    with open_writer(setup["idx"], card=card, model_dir=model) as w:
        moved = next(f for f in people.unclustered if keys_of(setup, [f]) == {40})
        P.stage_move(w, moved.id, P.person_id(a.number))
        w.commit()
    assert 40 in keys_of(setup, person_with(read(setup), 10, setup).faces)


def test_a_people_write_interrupted_before_its_manifest_leaves_the_previous_state(setup, monkeypatch):
    built(setup)
    group(setup)
    before = read(setup)
    a = person_with(before, 10, setup)

    def crash(*args, **kwargs):
        raise OSError("disk gone")

    with monkeypatch.context() as m:
        m.setattr(facesearch.index.storage.writer, "commit", crash)
        with open_writer(setup["idx"], card=setup["emb"].card, model_dir=setup["emb"].model_dir) as w:
            P.stage_name(w, P.person_id(a.number), "Ada")
            with pytest.raises(OSError):
                w.commit()
    assert read(setup) == before
    with GalleryIndex.open(setup["idx"]) as g:
        assert g.manifest.identities == 3
        assert rank_identities(g, setup["rows"][10], k=1, threshold=0.5).verdict == "unknown"
    # The next write rolls the leftover rows back and goes on.
    with open_writer(setup["idx"], card=setup["emb"].card, model_dir=setup["emb"].model_dir) as w:
        P.stage_name(w, P.person_id(a.number), "Ada")
        w.commit()
    with GalleryIndex.open(setup["idx"]) as g:
        assert rank_identities(g, setup["rows"][10], k=1, threshold=0.5).verdict == "Ada"
