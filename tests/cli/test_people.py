"""`facesearch build-index --unlabeled` and `facesearch people` (list, name, merge, move) on real faces.

Photos: scikit-image's astronaut (and its mirror image), the cameraman, and both side by side in
one photo, in an unlabelled folder of any layout, beside a labelled gallery of one identity
(`cameraman`, his mirror image): one index holds both.
"""

from __future__ import annotations

import json
import shutil

from clitools import invoke, invoke_json
from PIL import Image


def make_family(photos, root):
    (root / "a" / "b").mkdir(parents=True)
    shutil.copy(photos / "astronaut.jpg", root / "a" / "b" / "1.jpg")
    shutil.copy(photos / "astronaut_flip.jpg", root / "2.jpg")
    shutil.copy(photos / "camera.png", root / "a" / "3.png")
    shutil.copy(photos / "group.jpg", root / "group.jpg")
    return root


def test_people_commands(photos, default_model, tmp_path, monkeypatch):
    monkeypatch.setenv("FACESEARCH_MODEL", str(default_model))
    family = make_family(photos, tmp_path / "family")
    labelled = tmp_path / "gallery" / "cameraman"
    labelled.mkdir(parents=True)
    with Image.open(photos / "camera.png") as im:
        im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(labelled / "flipped.png")
    idx = tmp_path / "idx"
    invoke_json("build-index", tmp_path / "gallery", "--index", idx)
    built = invoke_json("build-index", family, "--unlabeled", "--index", idx)
    assert (built["added"], built["vectors"], built["identities"], built["faces_policy"]) == (4, 6, 1, "all")

    listed = invoke_json("people", "--index", idx)
    assert set(listed) == {"people", "unclustered"}
    people = listed["people"]
    assert [p["person"] for p in people] == ["person-0001", "person-0002"]
    astronaut, cameraman = people
    assert len(astronaut["faces"]) == 3 and len(cameraman["faces"]) == 2
    for p in people:
        assert all(f["path"].startswith(str(family.resolve())) and len(f["box"]) == 4 for f in p["faces"])
        assert len({f["path"] for f in p["faces"]}) == len(p["faces"])  # one face per photo at most
    # The cameraman group looks like the labelled cameraman: offered, with its score, not merged.
    assert cameraman["suggestion"]["identity"] == "cameraman" and cameraman["suggestion"]["score"] > 0.5
    assert astronaut["suggestion"] is None and cameraman["name"] is None

    text = invoke("people", "--index", idx)
    assert text.exit_code == 0 and "person-0001: 3 faces" in text.stdout and "looks like 'cameraman'" in text.stdout

    for args, message in [(("name", "person-0007", "Ada"), "no person 'person-0007'"),
                          (("name", "person-0001", ""), "is not allowed"),
                          (("merge", "person-0001", "person-0001"), "with itself"),
                          (("move", "424242"), "no face 424242")]:
        result = invoke("people", *args, "--index", idx)
        assert result.exit_code == 1 and message in result.stderr and result.stderr.startswith("Error: "), result.output

    named = invoke_json("people", "name", "person-0001", "Eileen Collins", "--index", idx)
    assert named == {"action": "name", "person": "person-0001", "name": "Eileen Collins", "faces": 3,
                     "joined": None, "generation": named["generation"]}
    answer = invoke_json("query", photos / "astronaut.jpg", "--index", idx)
    assert answer["faces"][0]["identity"] == "Eileen Collins"
    # Naming the cameraman group after the labelled identity adds its faces to that identity.
    invoke_json("people", "name", "person-0002", "cameraman", "--index", idx)
    with open(idx / "manifest.json") as f:
        assert json.load(f)["counts"]["identities"] == 2
    group = invoke_json("query", family / "group.jpg", "--index", idx)
    assert sorted(face["identity"] for face in group["faces"]) == ["Eileen Collins", "cameraman"]

    lone = next(f for f in invoke_json("people", "--index", idx)["people"][1]["faces"] if f["path"].endswith("3.png"))
    moved = invoke_json("people", "move", str(lone["id"]), "--index", idx)
    assert (moved["person"], moved["joined"]) == (None, "person-0002")
    back = invoke_json("people", "move", str(lone["id"]), "--to", "person-0002", "--index", idx)
    assert (back["person"], back["name"]) == ("person-0002", "cameraman")
    merged = invoke("people", "merge", "person-0001", "person-0002", "--index", idx)
    assert merged.exit_code == 1 and "different names" in merged.stderr
