"""`facesearch calibrate`, `build-index --fpir` and `query --fpir/--threshold` through the CLI.

The session's gallery has 20 identities, far too few to estimate a 1% threshold from itself; so the
refusal is checked on it, and the stored threshold is measured on generated people who are neither
trained on nor enrolled (`calibrate --strangers`), as the demo does.
"""

from __future__ import annotations

import shutil

import pytest
from clitools import ENROLLED, STRANGERS, invoke, invoke_json

from facesearch.index.openset.calibration import Calibration
from facesearch.train.synthetic import make_synthetic_faces

CALIBRATION_PEOPLE = 60


@pytest.fixture(scope="module")
def stranger_photos(tmp_path_factory, faces):
    """One photo each of 60 generated people after the enrolled ones and the probe strangers, plus a
    folder of an enrolled person (which calibration must leave out)."""
    root = tmp_path_factory.mktemp("strangers")
    first = ENROLLED + STRANGERS
    make_synthetic_faces(root, first + CALIBRATION_PEOPLE, 1, start=33)
    for person in sorted(root.iterdir()):
        if int(person.name.split("_")[1]) < first:
            shutil.rmtree(person)
    shutil.copytree(faces / "gallery" / "id_00", root / "id_00")
    return root


@pytest.fixture
def index(faces, model_dir, tmp_path):
    index = tmp_path / "index"
    report = invoke_json("build-index", "--aligned", faces / "gallery", "--model", model_dir, "--index", index)
    assert report["calibration"]["action"] == "none", report["calibration"]
    assert "20 identities are too few" in report["calibration"]["message"]
    return index


def test_too_small_a_gallery_is_refused_with_the_minimum_and_what_to_do(index, faces, model_dir):
    r = invoke("calibrate", "--index", index)
    assert r.exit_code == 1, r.output
    assert ("Error: cannot calibrate at FPIR 0.01 from 20 gallery identities: at least 500 are needed (5 / FPIR); "
            "give a threshold with --threshold, ask for a higher --fpir (these 20 support 0.25 and above), or "
            "calibrate on real non-enrolled photos with `facesearch calibrate --strangers DIR`") in r.stderr
    r = invoke("calibrate", "--index", index, "--fpir", "1.5")
    assert r.exit_code == 2 and "expected a rate strictly between 0 and 1" in r.output
    r = invoke("query", "--aligned", faces / "probes" / "id_01" / "033.png", "--index", index, "--fpir", "0.1")
    assert r.exit_code == 1 and "--fpir 0.1 needs a calibrated index and this one has none" in r.stderr

    report = invoke_json("build-index", "--aligned", faces / "gallery", "--index", index, "--fpir", "0.01")
    assert report["calibration"]["action"] == "refused" and "at least 500 are needed" in report["calibration"]["message"]
    r = invoke("build-index", "--aligned", faces / "gallery", "--index", index, "--fpir", "0.3")
    assert r.exit_code == 0, r.output
    assert "open-set threshold: calibrated: threshold" in r.stdout and "for FPIR 0.3 (margin rule" in r.stdout

    calibrated = invoke_json("calibrate", "--index", index, "--fpir", "0.25")  # the lowest 20 identities support
    assert calibrated["calibration"]["method"] == "leave-one-identity-out"
    assert (calibrated["calibration"]["target_fpir"], calibrated["calibration"]["gallery_identities"]) == (0.25, 20)


def test_query_answers_with_the_stored_threshold_and_the_overrides(index, faces, model_dir, stranger_photos):
    probe = faces / "probes" / "id_04" / "033.png"
    before = invoke_json("query", "--aligned", probe, "--index", index)
    assert before["threshold_source"] == "default" and before["faces"][0]["decision"]["rule"] == "score"

    answer = invoke_json("calibrate", "--index", index, "--strangers", stranger_photos, "--fpir", "0.1", "--aligned")
    stored = Calibration.from_dict(answer["calibration"])
    assert (stored.method, stored.target_fpir, stored.sampled_identities) == ("strangers", 0.1, CALIBRATION_PEOPLE)
    assert answer["strangers"]["enrolled_left_out"] == ["id_00"] and answer["strangers"]["people"] == CALIBRATION_PEOPLE

    after = invoke_json("query", "--aligned", probe, "--index", index)
    face = after["faces"][0]
    assert (after["threshold"], after["threshold_source"]) == (stored.threshold, "calibration")
    assert face["decision"] | {"statistic": None, "runner_up_score": None} == {
        "rule": "margin", "fusion": "template", "margin_weight": 1.0, "threshold": stored.threshold,
        "fpir": 0.1, "calibration_method": "strangers", "statistic": None, "runner_up_score": None}
    assert face["known"] == (face["decision"]["statistic"] >= stored.threshold)
    text = invoke("query", "--aligned", probe, "--index", index)
    assert text.exit_code == 0 and "margin rule calibrated for FPIR 0.1" in text.stdout

    other = invoke_json("query", "--aligned", probe, "--index", index, "--fpir", "0.2")
    assert other["threshold_source"] == "--fpir" and other["threshold"] == pytest.approx(stored.threshold_at(0.2))
    fixed = invoke_json("query", "--aligned", probe, "--index", index, "--fpir", "0.2", "--threshold", "0.5")
    assert (fixed["threshold"], fixed["threshold_source"], fixed["faces"][0]["decision"]["rule"]) == \
        (0.5, "--threshold", "score")
    r = invoke("query", "--aligned", probe, "--index", index, "--fpir", "0.001")
    assert r.exit_code == 1 and "FPIR 0.001 is outside what this calibration resolves" in r.stderr
