"""The open-set estimator (facesearch.index.openset.calibration, facesearch.index.openset.decision) against loop-based references and hand-worked values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from facesearch.embedder.core.model_card import ModelCard
from facesearch.index.openset import calibration as C
from facesearch.index.openset.decision import Decision, decision_statistic, fuse_identity_scores, identity_templates


def unit(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered(rng: np.random.Generator, n_ids: int = 60, per: tuple[int, int] = (1, 4),
              d: int = 16) -> tuple[np.ndarray, list[str]]:
    """Faces around one centre per identity: `per` faces each (inclusive range)."""
    centres = unit(n_ids, d, rng)
    vs, ids = [], []
    for i in range(n_ids):
        for _ in range(rng.integers(per[0], per[1] + 1)):
            v = centres[i] + 0.5 * rng.standard_normal(d).astype(np.float32)
            vs.append(v / np.linalg.norm(v))
            ids.append(f"id{i:03d}")
    return np.array(vs, np.float32), ids


@pytest.mark.parametrize("fusion", ["best", "top2", "template"])
@pytest.mark.parametrize("rule", ["score", "margin"])
def test_leave_one_identity_out_matches_a_loop_reference(fusion, rule):
    rng = np.random.default_rng(0)
    v, ids = clustered(rng)
    s = C.leave_one_identity_out(v, ids, fusion=fusion, rule=rule, faces_per_identity=100)
    labels = sorted(set(ids))
    lab = np.array([labels.index(i) for i in ids])
    templates = {k: identity_templates(v[lab == k], [0] * int((lab == k).sum()))[1][0] for k in set(lab.tolist())}
    ref = []
    for q in np.argsort(lab, kind="stable"):  # every face, its own identity left out, identity scores by loops
        per: dict[int, list[float]] = {}
        for j in range(len(v)):
            per.setdefault(lab[j], []).append(float(v[q] @ v[j]))
        if fusion == "template":
            fused = {k: float(v[q] @ templates[k]) for k in per}
        else:
            fused = {k: (max(x) if fusion == "best" else np.mean(sorted(x)[::-1][:2])) for k, x in per.items()}
        del fused[lab[q]]
        ref.append(decision_statistic(np.array(sorted(fused.values(), reverse=True)[:2]), rule))
    np.testing.assert_allclose(np.sort(s.statistics), np.sort(ref), atol=1e-5)
    assert s.searched_identities == len(labels) - 1 and s.sampled_identities == len(labels)


def test_fusing_neighbours_matches_per_identity_scores():
    rng = np.random.default_rng(1)
    v, ids = clustered(rng, 30)
    q = v[0]
    scores = v @ q
    for fusion in ("best", "top2"):
        labels, fused = fuse_identity_scores(scores, ids, fusion)
        expected = {}
        for name in set(ids):
            own = np.sort(scores[[i for i, x in enumerate(ids) if x == name]])[::-1]
            expected[name] = own[0] if fusion == "best" else own[:2].mean()
        assert labels == sorted(expected, key=lambda name: -expected[name])
        np.testing.assert_allclose(fused, [expected[name] for name in labels], atol=1e-6)
    with pytest.raises(ValueError, match="one neighbour per identity"):
        fuse_identity_scores(scores, ids, "template")


def test_decision_statistic_hand_worked():
    np.testing.assert_allclose(decision_statistic(np.array([[0.9, 0.7], [0.8, 0.79]]), "margin", 1.0), [1.1, 0.81])
    assert decision_statistic(np.array([0.9]), "margin") == pytest.approx(0.9 + 1.9)  # no runner-up: -1
    assert decision_statistic(np.array([0.9, -np.inf]), "margin") == pytest.approx(2.8)
    assert decision_statistic(np.array([0.9, 0.1]), "score") == pytest.approx(0.9)
    assert Decision(1.0, "margin").statistic(0.9, 0.85) == pytest.approx(0.95)
    with pytest.raises(ValueError, match="unknown threshold source"):
        Decision(0.5, source="elsewhere")


def test_threshold_is_the_median_unbiased_quantile_and_small_samples_are_refused():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(100_000)
    t = C.threshold_for_fpir(x, 0.01, searched_identities=99_999, gallery_identities=100_000)
    assert abs(np.mean(x >= t) - 0.01) < 0.001
    with pytest.raises(C.GalleryTooSmallError, match=r"at least 500 .*--threshold.*--fpir \(these 499 support "
                                                     r"0\.011 and above\).*calibrate --strangers DIR"):
        C.threshold_for_fpir(x[:499], 0.01, searched_identities=498, gallery_identities=499)
    C.threshold_for_fpir(x[:500], 0.01, searched_identities=499, gallery_identities=500)
    assert (C.minimum_identities(0.01), C.minimum_identities(0.001), C.minimum_identities(0.05)) == (500, 5000, 100)
    assert C.lowest_supported_fpir(20) == 0.25 and C.lowest_supported_fpir(1680) == 0.003


def test_carrying_an_fpir_to_another_gallery_size():
    assert C.carry_fpir(0.01, 100, 100) == pytest.approx(0.01)
    assert C.carry_fpir(0.01, 100, 200) == pytest.approx(1 - 0.99 ** 2)
    assert C.carry_fpir(C.carry_fpir(0.02, 10, 37), 37, 10) == pytest.approx(0.02)


def test_calibration_round_trip_and_lookups():
    rng = np.random.default_rng(3)
    v, ids = clustered(rng, 700, (1, 2), 32)
    c = C.calibrate_gallery(v, ids, target_fpir=0.01)
    d = json.loads(json.dumps(c.to_dict()))
    assert C.Calibration.from_dict(d) == c and len(json.dumps(d)) < 4000  # small at any gallery size
    assert c.threshold_at() == c.threshold
    assert abs(c.threshold_at(0.0100001) - c.threshold) < 0.01
    assert c.threshold_at(0.05) < c.threshold < c.threshold_at(0.01, gallery_identities=800)
    assert c.threshold_at(0.01, gallery_identities=600) == c.threshold  # a shrunk gallery keeps its threshold
    assert not c.needs_recalibration(700, c.gallery_faces) and c.needs_recalibration(900, c.gallery_faces)
    assert c.needs_recalibration(700, int(c.gallery_faces * 1.3)) and c.needs_recalibration(500, c.gallery_faces)
    with pytest.raises(C.CalibrationError, match="outside what this calibration resolves"):
        c.threshold_at(0.001)
    with pytest.raises(C.CalibrationError, match="version"):
        C.Calibration.from_dict({**d, "version": 9})
    with pytest.raises(C.CalibrationError, match="malformed"):
        C.Calibration.from_dict({k: x for k, x in d.items() if k != "threshold"})
    with pytest.raises(C.GalleryTooSmallError):
        C.calibrate_gallery(v[:300], ids[:300])


def test_resolve_decision_precedence():
    rng = np.random.default_rng(4)
    v, ids = clustered(rng, 600, (1, 2), 32)
    stored = C.calibrate_gallery(v, ids).to_dict()
    card = ModelCard(name="m", input_height=8, input_width=8, embedding_size=32, alignment_template="none")
    calibrated_card = ModelCard(name="m", input_height=8, input_width=8, embedding_size=32,
                                alignment_template="none", thresholds={"far_1e-3": 0.7})

    by_threshold = C.resolve_decision(card, stored, 600, threshold=0.5, fpir=0.02)  # --threshold beats --fpir
    assert (by_threshold.threshold, by_threshold.source, by_threshold.rule) == (0.5, "--threshold", "score")
    by_fpir = C.resolve_decision(card, stored, 600, fpir=0.02)
    assert (by_fpir.source, by_fpir.fpir, by_fpir.rule) == ("--fpir", 0.02, "margin")
    assert by_fpir.threshold == pytest.approx(C.Calibration.from_dict(stored).threshold_at(0.02))
    default = C.resolve_decision(card, stored, 600)
    assert (default.threshold, default.source, default.fpir) == (stored["threshold"], "calibration", 0.01)
    assert C.resolve_decision(card, stored, 700).threshold > stored["threshold"]  # grown: carried upwards
    assert C.resolve_decision(card, None, 600).source == "default"
    assert C.resolve_decision(calibrated_card, None, 600).threshold == 0.7
    assert C.resolve_decision(calibrated_card, None, 600).source == "model-card"
    with pytest.raises(C.CalibrationError, match="--fpir 0.02 needs a calibrated index.*facesearch calibrate"):
        C.resolve_decision(card, None, 600, fpir=0.02)
