"""Time to a named gallery on LFW (skipped without it): unlabelled photos of several people and
strangers -> people -> name one group -> `search` of a held-out photo of that person names them.

The selection is fixed (the first people by name with enough photos), so the run is deterministic.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import facesearch

LFW = Path(os.environ.get("FACESEARCH_LFW", Path(__file__).resolve().parents[3] / "shared" / "lfw"))
IMAGES = LFW / "images_deepfunneled"
pytestmark = pytest.mark.skipif(not IMAGES.is_dir(), reason=f"LFW not found at {LFW} (set FACESEARCH_LFW)")
PEOPLE, PHOTOS, STRANGERS = 10, 5, 40  # people with PHOTOS unlabelled photos (+1 held out), one-photo strangers


def chosen() -> tuple[dict[str, list[Path]], list[Path]]:
    folders = sorted(p for p in IMAGES.iterdir() if p.is_dir())
    many = [f for f in folders if len(list(f.glob("*.jpg"))) >= PHOTOS + 1][:PEOPLE]
    once = [f for f in folders if len(list(f.glob("*.jpg"))) == 1][:STRANGERS]
    return {f.name: sorted(f.glob("*.jpg"))[:PHOTOS + 1] for f in many}, [next(f.glob("*.jpg")) for f in once]


def test_lfw_unlabelled_to_named(default_model, tmp_path):
    people, strangers = chosen()
    family = tmp_path / "family"
    owner = {}
    for i, (name, photos) in enumerate(people.items()):
        for j, photo in enumerate(photos[:PHOTOS]):  # any layout: no folder names a person
            target = family / f"roll{j}" / f"img_{i}_{j}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, target)
            owner[target.resolve().as_posix()] = name
    for k, photo in enumerate(strangers):
        shutil.copy(photo, family / f"stranger_{k}.jpg")
    gallery = facesearch.open(tmp_path / "idx", model=default_model)
    gallery.add(family, labeled=False)

    found = gallery.people()
    for person in found:  # a photo with several faces (LFW has them) never gives one person two of them
        paths = [f.path for f in person.faces]
        assert len(paths) == len(set(paths)), person.person
    # Each chosen person is one group: the group holding most of their photos holds all their photos
    # (their largest face) and nobody else's photos among the chosen ones.
    for name in people:
        theirs = {p for p, who in owner.items() if who == name}
        best = max(found, key=lambda g: len(theirs & {f.path for f in g.faces}))
        got = {f.path for f in best.faces}
        assert theirs <= got, (name, best.person)
        assert not {p for p in got if p in owner and owner[p] != name}, (name, best.person)

    name = next(iter(people))
    theirs = {p for p, who in owner.items() if who == name}
    group = next(g for g in found if theirs <= {f.path for f in g.faces})
    gallery.name(group.person, name)
    held_out = people[name][PHOTOS]
    answer = gallery.search(held_out, faces="largest").faces[0]
    assert answer.identity == name, answer
    for other, photos in list(people.items())[1:]:  # the others, not named, are not answered as anyone
        assert gallery.search(photos[PHOTOS], faces="largest").faces[0].identity is None, other
