"""Self-calibration of an index: its searches against the numpy reference, the estimate against known
strangers, recalibration as the gallery changes, refusals, and what `FaceSearcher` answers with it.

Galleries are seeded synthetic identities (a centre per person, faces scattered around it) written
through the writer API without photos; strangers are further people from the same generator.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from facesearch.embedder.core.model_card import ModelCard
from facesearch.index import GalleryIndex, IndexWriter, open_writer
from facesearch.index.openset import calibration as C
from facesearch.index.openset import ranking as search
from facesearch.index.openset.open_set import (
    Rule,
    calibrate_with_strangers,
    loio_samples,
)
from facesearch.index.openset.ranking import rank_batch
from facesearch.index.query import FaceSearcher
from facesearch.index.recalibration import recalibrate
from facesearch.index.storage.store import Photo

D = 32
CARD = ModelCard(name="fake-vectors", input_height=8, input_width=8, embedding_size=D, alignment_template="none")
SPREAD = 0.7  # noise around an identity's centre: genuine cosines ~0.7, impostors ~0 +- 0.18


class People:
    """Seeded synthetic people: `faces(person, n)` gives n faces of one person, always the same ones."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def faces(self, person: int, n: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, person])
        centre = rng.standard_normal(D)
        v = centre / np.linalg.norm(centre) + SPREAD * rng.standard_normal((n, D)) / np.sqrt(D)
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def enrol(writer: IndexWriter, people: People, persons, per: int | dict = 1, first_face: int = 0) -> None:
    for p in persons:
        n = per if isinstance(per, int) else per[p]
        for j, v in enumerate(people.faces(p, first_face + n)[first_face:], start=first_face):
            key = f"p{p:05d}-{j}"
            writer.add_photo(Photo(f"{key}.jpg", f"p{p:05d}", 1, 1, key, 1, "api"), [(0, None)], v[None])


@pytest.fixture
def model_args(tmp_path):
    (tmp_path / "model").mkdir()
    return {"card": CARD, "model_dir": tmp_path / "model"}


def build(index_dir, model_args, people: People, persons, per=1, **calibration):
    with open_writer(index_dir, **model_args) as w:
        if calibration:
            w.request_calibration(**calibration)
        enrol(w, people, persons, per)
        return w.commit()


def live_vectors(g: GalleryIndex) -> tuple[np.ndarray, list[str]]:
    pairs = list(g.store.face_identities())  # by id
    return g.vectors([i for i, _ in pairs]), [name for _, name in pairs]


@pytest.mark.parametrize("preload", [False, True], ids=["per-identity reads", "preloaded table"])
@pytest.mark.parametrize("fusion", ["best", "top2", "template"])
@pytest.mark.parametrize("rule", ["score", "margin"])
def test_loio_through_the_index_matches_the_numpy_reference(tmp_path, model_args, monkeypatch, fusion, rule, preload):
    """Both ways of finding faces' identities: record by record, and the table a large calibration preloads."""
    monkeypatch.setattr(search, "TEMPLATE_CANDIDATES", 1000)  # every identity scored: exactly the reference
    people = People(1)
    per = {p: 1 + p % 4 for p in range(80)}  # 1 to 4 faces: sampling picks 2 of 3 or 4
    build(tmp_path / "idx", model_args, people, range(80), per)
    with GalleryIndex.open(tmp_path / "idx") as g:
        faces = search.IdentityFaces(g)
        if preload:
            faces.preload()
            assert len(faces.identity_of) == 200
        got = loio_samples(g, rule=Rule(rule, fusion), max_identities=50, seed=7, faces=faces)
        v, names = live_vectors(g)
    ref = C.leave_one_identity_out(v, names, fusion=fusion, rule=rule, max_identities=50, seed=7)
    assert (got.sampled_identities, got.searched_identities, got.gallery_identities, got.gallery_faces) == \
        (ref.sampled_identities, ref.searched_identities, ref.gallery_identities, ref.gallery_faces) == (50, 79, 80, 200)
    np.testing.assert_allclose(got.statistics, ref.statistics, atol=1e-5)  # same faces, same order


def test_template_candidates_from_the_neighbours_decide_as_every_template_would(tmp_path, model_args):
    """At query time only the identities among the nearest faces (`TEMPLATE_CANDIDATES`) get their
    templates scored: enrolled people come out the same, and so does every accept/reject decision."""
    people = People(2)
    build(tmp_path / "idx", model_args, people, range(600), {p: 1 + p % 3 for p in range(600)})
    queries = np.concatenate([people.faces(p, 4)[3:] for p in range(0, 600, 3)] +
                             [people.faces(p, 1) for p in range(1000, 1400)])
    with GalleryIndex.open(tmp_path / "idx") as g:
        decision = C.Calibration.from_dict(g.manifest.calibration).decision()
        got = rank_batch(g, queries, k=2, decision=decision)
        v, names = live_vectors(g)
    labels, templates = C.identity_templates(v, names)
    scores = queries.astype(np.float64) @ templates.T.astype(np.float64)
    ref = C.decision_statistic(-np.sort(-scores, axis=1)[:, :2], "margin")
    ref_identity = labels[np.argmax(scores, axis=1)]
    enrolled = slice(0, 200)
    assert [r.best.identity for r in got[enrolled]] == ref_identity[enrolled].tolist()
    statistic = np.array([r.statistic for r in got])
    assert np.mean(np.abs(statistic[enrolled] - ref[enrolled]) < 1e-5) > 0.98  # a runner-up may lie further out
    assert ((statistic >= decision.threshold) == (ref >= decision.threshold)).all()
    assert np.mean([r.best.identity for r in got] == ref_identity) > 0.9  # strangers: weak clusters may reorder


def test_fpir_estimate_agrees_with_a_direct_measurement_on_known_strangers(tmp_path, model_args):
    people = People(3)
    result = build(tmp_path / "idx", model_args, people, range(1000), {p: 1 + p % 2 for p in range(1000)})
    assert result.calibration["action"] == "calibrated" and result.calibration["target_fpir"] == 0.01
    strangers = np.concatenate([people.faces(p, 1) for p in range(5000, 7500)])  # 2,500 people never enrolled
    with GalleryIndex.open(tmp_path / "idx") as g:
        c = C.Calibration.from_dict(g.manifest.calibration)
        assert (c.method, c.gallery_identities, c.gallery_faces, c.sampled_identities) == \
            ("leave-one-identity-out", 1000, 1500, 1000)
        assert (c.rule, c.fusion) == ("margin", "template")
        statistics = np.array([r.statistic for r in rank_batch(g, strangers, k=1, decision=c.decision())])
        direct = calibrate_with_strangers(g, strangers, [str(i) for i in range(len(strangers))], 0.01)
    for fpir in (0.01, 0.02, 0.05):
        measured = float(np.mean(statistics >= c.threshold_at(fpir)))
        assert fpir / 2 <= measured <= fpir * 2, (fpir, measured)
    assert direct.method == "strangers" and direct.searched_identities == 1000
    assert abs(float(np.mean(statistics >= direct.threshold)) - 0.01) < 0.002  # the direct one hits it on its data

    with open_writer(tmp_path / "idx", **model_args) as w:  # grown x1.2: kept, carried to 1,200 by query
        enrol(w, people, range(1000, 1200))
        assert w.commit().calibration["action"] == "kept"
    with GalleryIndex.open(tmp_path / "idx") as g:
        decision = FaceSearcher(g, card=CARD).decision()
        carried = np.array([r.statistic for r in rank_batch(g, strangers, k=1, decision=decision)])
    assert decision.threshold > c.threshold
    assert 0.005 <= float(np.mean(carried >= decision.threshold)) <= 0.02


def test_recalibration_when_the_gallery_grows_or_shrinks(tmp_path, model_args, monkeypatch):
    import facesearch.index.openset.open_set as open_set

    searched = []
    real = open_set.loio_samples
    monkeypatch.setattr(open_set, "loio_samples", lambda g, **kw: searched.append(len(g)) or real(g, **kw))
    people, idx = People(4), tmp_path / "idx"
    first = build(idx, model_args, people, range(600))
    assert first.calibration["action"] == "calibrated" and searched == [600]
    stored = read_calibration(idx)

    with open_writer(idx, **model_args) as w:  # +50 identities (x1.08): kept, no search at all
        enrol(w, people, range(600, 650))
        grown = w.commit()
    assert grown.calibration["action"] == "kept" and searched == [600]
    assert read_calibration(idx) == stored
    with GalleryIndex.open(idx) as g:  # queries carry the threshold to 650 identities, upwards
        decision = FaceSearcher(g, card=CARD).decision()
        assert decision.threshold > stored["threshold"] and decision.source == "calibration"

    with open_writer(idx, **model_args) as w:  # to 800 (x1.33 of 600): computed again
        enrol(w, people, range(650, 800))
        again = w.commit()
    assert again.calibration["action"] == "calibrated" and searched == [600, 800]
    assert read_calibration(idx)["gallery_identities"] == 800

    with open_writer(idx, **model_args) as w:  # a merge changes no content: the calibration stays
        merged = w.compact(force=True)
    assert merged.written and read_calibration(idx)["gallery_identities"] == 800 and searched == [600, 800]

    with open_writer(idx, **model_args) as w:  # down to 300: 1% needs 500, so the lowest rate 300 support
        w.remove_photos([f"p{p:05d}-0.jpg" for p in range(300, 800)])
        shrunk = w.commit()
    c = read_calibration(idx)
    assert shrunk.calibration["action"] == "calibrated" and searched[-1] == 300
    assert (c["target_fpir"], c["requested_fpir"], c["gallery_identities"]) == (0.017, 0.01, 300)
    assert "the lowest rate its 300 identities support; FPIR 0.01 needs 500" in shrunk.calibration["message"]

    with open_writer(idx, **model_args) as w:  # down to 60: too few for any automatic rate
        w.remove_photos([f"p{p:05d}-0.jpg" for p in range(60, 300)])
        tiny = w.commit()
    assert tiny.calibration["action"] == "none" and read_calibration(idx) is None
    assert "no rate is calibrated automatically" in tiny.calibration["message"]


def read_calibration(index_dir) -> dict | None:
    return json.loads((index_dir / "manifest.json").read_text())["calibration"]


def test_a_failed_calibration_keeps_the_write_and_the_previous_estimate(tmp_path, model_args, monkeypatch):
    import facesearch.index.openset.open_set as open_set

    people, idx = People(5), tmp_path / "idx"
    build(idx, model_args, people, range(600))
    stored = read_calibration(idx)

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(open_set, "calibrate_index", broken)
    with open_writer(idx, **model_args) as w:
        enrol(w, people, range(600, 900))
        result = w.commit()
    assert result.written and result.faces == 900  # the user's write went through
    assert result.calibration["action"] == "failed" and "disk on fire" in result.calibration["message"]
    assert "the previous calibration is kept" in result.calibration["message"]
    assert read_calibration(idx) == stored
    with GalleryIndex.open(idx) as g:
        assert len(g) == 900


def test_too_small_a_gallery_is_refused_with_the_minimum_and_what_to_do(tmp_path, model_args):
    people, idx = People(6), tmp_path / "idx"
    small = build(idx, model_args, people, range(60))
    assert small.calibration["action"] == "none" and read_calibration(idx) is None
    generation = json.loads((idx / "manifest.json").read_text())["generation"]
    with pytest.raises(C.GalleryTooSmallError) as e:
        recalibrate(idx, fpir=0.01)
    message = str(e.value)
    for part in ("cannot calibrate at FPIR 0.01 from 60 gallery identities", "at least 500 are needed",
                 "--threshold", "--fpir (these 60 support 0.084 and above)", "calibrate --strangers DIR"):
        assert part in message, message
    assert json.loads((idx / "manifest.json").read_text())["generation"] == generation  # nothing written
    with GalleryIndex.open(idx) as g:
        with pytest.raises(C.CalibrationError, match="needs a calibrated index"):
            FaceSearcher(g, card=CARD, fpir=0.01).decision()

    answer = recalibrate(idx, fpir=0.1)  # a rate 60 identities do support
    assert answer["calibration"]["target_fpir"] == 0.1 and read_calibration(idx)["target_fpir"] == 0.1

    with open_writer(idx, **model_args) as w:  # build-index --fpir 0.01 on it: refused, the write is kept
        w.request_calibration(0.01)
        enrol(w, people, range(60, 70))
        refused = w.commit()
    assert refused.written and refused.calibration["action"] == "refused"
    assert "at least 500 are needed" in refused.calibration["message"]
    assert "previous calibration is kept" in refused.calibration["message"]
    assert read_calibration(idx)["target_fpir"] == 0.1


def test_a_gallery_below_the_default_minimum_is_calibrated_at_the_lowest_rate_it_supports(tmp_path, model_args):
    result = build(tmp_path / "idx", model_args, People(7), range(250))
    c = read_calibration(tmp_path / "idx")
    assert result.calibration["action"] == "calibrated"
    assert (c["target_fpir"], c["requested_fpir"]) == (0.02, 0.01)
    recalibrate(tmp_path / "idx", fpir=0.05)  # asked: that rate, and later commits keep it
    assert read_calibration(tmp_path / "idx")["target_fpir"] == 0.05


def test_query_uses_the_stored_threshold_and_says_where_it_came_from(tmp_path, model_args):
    people = People(8)
    build(tmp_path / "idx", model_args, people, range(600), {p: 1 + p % 2 for p in range(600)})
    probes = np.concatenate([people.faces(3, 3)[2:], people.faces(7000, 1)])  # an enrolled face, a stranger
    with GalleryIndex.open(tmp_path / "idx") as g:
        c = C.Calibration.from_dict(g.manifest.calibration)
        searcher = FaceSearcher(g, card=CARD)
        answers = searcher.answer_vectors(probes, k=3)
        for a in answers:
            d = a["decision"]
            assert (d["threshold"], d["fpir"], d["rule"], d["fusion"], d["calibration_method"]) == \
                (c.threshold, 0.01, "margin", "template", "leave-one-identity-out")
            assert a["threshold"] == c.threshold
            assert a["known"] == (d["statistic"] >= c.threshold)
            assert d["statistic"] == pytest.approx(a["matches"][0]["score"] * 2 - d["runner_up_score"])
        assert answers[0]["identity"] == "p00003" and answers[1]["verdict"] == "unknown"
        assert searcher.header(None) == {"index": str(g.index_dir), "model": CARD.name, "threshold": c.threshold,
                                          "threshold_source": "calibration"}

        at = FaceSearcher(g, card=CARD, fpir=0.05)  # --fpir: another rate from the stored estimate
        assert at.decision().source == "--fpir" and at.decision().threshold == pytest.approx(c.threshold_at(0.05))
        assert at.answer_vectors(probes[:1])[0]["decision"]["fpir"] == 0.05
        fixed = at.answer_vectors(probes, threshold=0.5)  # --threshold overrides --fpir: a best-score cut-off
        assert at.decision(0.5).source == "--threshold" and at.header(0.5)["threshold_source"] == "--threshold"
        assert all(a["decision"]["rule"] == "score" and a["decision"]["fpir"] is None and a["threshold"] == 0.5
                   for a in fixed)
        assert fixed[1]["known"] == (fixed[1]["matches"][0]["score"] >= 0.5)
        with pytest.raises(C.CalibrationError, match="outside what this calibration resolves"):
            FaceSearcher(g, card=CARD, fpir=0.0001).decision()


def test_eval_identify_places_the_stored_threshold_on_the_fpir_fnir_curve(tmp_path, model_dir, rng):
    from index_fakes import TableEmbedder, write_photo

    from facesearch.index.evaluation import evaluate_identification

    people = People(9)
    known, strangers = range(150), range(5000, 5300)
    table = np.concatenate([np.concatenate([people.faces(p, 2) for p in known]),  # key 2p: enrolled, 2p+1: probe
                            np.concatenate([people.faces(p, 1) for p in strangers])])
    for p in known:
        write_photo(tmp_path / "gallery" / f"p{p:03d}" / "a.png", rng, key=2 * p)
        write_photo(tmp_path / "probes" / f"p{p:03d}" / "b.png", rng, key=2 * p + 1)
    for j, p in enumerate(strangers):
        write_photo(tmp_path / "probes" / f"s{p}" / "a.png", rng, key=300 + j)
    result = evaluate_identification(tmp_path / "gallery", tmp_path / "probes", TableEmbedder(model_dir, table),
                                     compare_rules=True)

    assert result["calibration"]["action"] == "calibrated"  # 150 identities: the lowest rate they support
    assert "the lowest rate its 150 identities support" in result["calibration"]["message"]
    d = result["decision"]
    t = d["decision"]["threshold"]
    assert (d["decision"]["threshold_source"], d["decision"]["fpir"], d["decision"]["rule"]) == \
        ("calibration", 0.034, "margin")
    # the same figures by brute force: one face per person, so each template is that face
    g, q = table[0:300:2], np.concatenate([table[1:300:2], table[300:]])
    scores = q @ g.T
    top = -np.sort(-scores, axis=1)[:, :2]
    statistic = top[:, 0] * 2 - top[:, 1]
    right = np.argmax(scores[:150], axis=1) == np.arange(150)
    assert d["at_threshold"]["fpir"] == pytest.approx(np.mean(statistic[150:] >= t))
    assert d["at_threshold"]["fnir"] == pytest.approx(1 - np.mean(right & (statistic[:150] >= t)))
    curve = d["curve"]
    assert [p["fpir_target"] for p in curve] == [1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5]
    assert all(p["fpir"] <= p["fpir_target"] for p in curve)
    assert all(a["fnir"] >= b["fnir"] and a["threshold"] >= b["threshold"] for a, b in zip(curve, curve[1:]))
    assert d["oracle"]["fpir_target"] == 0.034 and d["oracle"]["fpir"] <= 0.034
    assert {(r["fusion"], r["rule"]) for r in result["rules"]} == {
        (f, r) for f in ("best", "top2", "template") for r in ("score", "margin")}
    margin = next(r for r in result["rules"] if (r["fusion"], r["rule"]) == ("template", "margin"))
    assert margin["threshold"] == pytest.approx(t) and margin["at_threshold"] == d["at_threshold"]


@pytest.mark.parametrize("moved", [10, 250], ids=["moved within x1.25: recorded", "moved beyond: computed again"])
def test_a_deferred_calibration_is_computed_beside_the_writes(tmp_path, model_args, monkeypatch, moved):
    """The service's writers defer the search to `calibrate_beside_writers`: it computes on a snapshot
    without the write lock (writes commit meanwhile), then records the estimate by a short commit, or
    computes again when the gallery moved beyond x1.25 of what it computed for."""
    import threading

    import facesearch.index.openset.open_set as open_set
    from facesearch.index.openset.commit import calibrate_beside_writers
    from facesearch.index.storage.generation import LOCK_FILE, LOCK_OBSERVERS

    people, idx = People(5), tmp_path / "idx"
    build(idx, model_args, people, range(600))
    stored = read_calibration(idx)
    with open_writer(idx, **model_args, defer_calibration=True) as w:  # x1.33: calls for a new estimate
        enrol(w, people, range(600, 800))
        deferred = w.commit()
    assert deferred.calibration["action"] == "deferred" and read_calibration(idx) == stored

    events, searched_holding, paused, go = [], [], threading.Event(), threading.Event()
    LOCK_OBSERVERS.append(lambda name, event: events.append((threading.current_thread().name, name, event)))
    real = open_set.loio_samples

    def watched(g, **kw):
        mine = [e for who, name, e in events if who == "calibrator" and name == LOCK_FILE]
        searched_holding.append(bool(mine) and mine[-1] == "acquired")
        if not paused.is_set():
            paused.set()
            assert go.wait(60)
        return real(g, **kw)

    monkeypatch.setattr(open_set, "loio_samples", watched)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(calibrate_beside_writers(idx)), name="calibrator")
    try:
        thread.start()
        assert paused.wait(60)
        with open_writer(idx, **model_args, wait=5, defer_calibration=True) as w:  # not blocked by the calibration
            enrol(w, people, range(800, 800 + moved))
            w.commit()
        go.set()
        thread.join(60)
    finally:
        go.set()
        LOCK_OBSERVERS.pop()
    final = 800 + moved
    c = read_calibration(idx)
    assert searched_holding and not any(searched_holding), "the calibration searched while holding the write lock"
    holds = [e for who, name, e in events if who == "calibrator" and name == LOCK_FILE and e == "acquired"]
    if moved == 10:
        assert outcome["attempts"] == 1 and c["gallery_identities"] == 800 and len(holds) == 1
    else:
        assert outcome["attempts"] == 2 and c["gallery_identities"] == final and len(holds) == 2
    # The independent reference: the same gallery built and calibrated in one go, at the size computed for.
    reference = tmp_path / "reference"
    build(reference, model_args, people, range(c["gallery_identities"]))
    assert read_calibration(reference)["threshold"] == c["threshold"]
    with GalleryIndex.open(idx) as g:
        assert len(g) == final and g.manifest.identities == final


def test_a_calibration_asked_for_survives_an_in_place_merge_before_the_commit(tmp_path, model_args):
    """A merge commits without the calibrator; the calibration asked for before it is still done by the
    next commit (a merge used to forget it)."""
    people, idx = People(6), tmp_path / "idx"
    build(idx, model_args, people, range(150))
    with open_writer(idx, **model_args) as w:
        w.request_calibration(0.05)
        assert w.compact(force=True).written
        assert read_calibration(idx)["target_fpir"] != 0.05
        result = w.commit()
    assert result.written and result.calibration["action"] == "calibrated"
    assert read_calibration(idx)["target_fpir"] == 0.05
