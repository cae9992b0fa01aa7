"""facesearch.index.storage.ann.decisions and the decision objective of `tune`: the verdict's inputs against exact search."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from facesearch.embedder.core.errors import IndexFormatError
from facesearch.index.storage import ann
from facesearch.index.storage.ann import decisions
from facesearch.index.storage.ann import tuning as ann_tuning

D = 64


pytestmark = pytest.mark.usefixtures("one_faiss_thread")  # tests/index/conftest.py


def arcface_like(identities: int, per: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """ArcFace-like rows: identity centres spread over the sphere (different people ~0), photos at
    same-person cosine ~0.74. Returns (vectors `(identities * per, D)`, identity of each row)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((identities, D)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(identities), per)
    x = centres[labels] + 0.593 * rng.standard_normal((len(labels), D)).astype(np.float32) / np.sqrt(D)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def reference_top_two(scores_row, positions_row, labels, own=None):
    """Plain-Python ranking of identities by their best face, for one query (the reference)."""
    seen = []
    for s, p in zip(scores_row, positions_row):
        if p < 0 or labels[p] == own or any(labels[p] == name for name, _ in seen):
            continue
        seen.append((labels[p], float(s)))
    seen += [(-1, -np.inf)] * 2
    return seen[:2]


# --- the metrics on hand-made cases ------------------------------------------------------------


def test_a_missed_runner_up_is_a_disagreement_and_a_low_one_is_not():
    labels = np.array([0, 0, 1, 2, 3])
    # Exact: identity 0 (0.9), runner-up 1 (0.6), then 2 (0.5). The approximate search missed row 2
    # (identity 1), so its runner-up is identity 2.
    exact = decisions.top_two(np.array([[0.9, 0.8, 0.6, 0.5]]), np.array([[0, 1, 2, 3]]), labels)
    found = decisions.top_two(np.array([[0.9, 0.8, 0.5, -np.inf]]), np.array([[0, 1, 3, -1]]), labels)
    np.testing.assert_array_equal(exact.identities, [[0, 1]])
    np.testing.assert_array_equal(found.identities, [[0, 2]])
    assert decisions.agreement(found, exact, floor=0.55) == (0.0, 0.0)  # the runner-up scored above the floor
    assert decisions.agreement(found, exact, floor=0.65) == (1.0, 0.0)  # below it: no verdict reads it
    # As a stranger (identity 0 left out), identity 1 is the top one; missing it is a disagreement.
    own = np.array([0])
    as_stranger = decisions.top_two(np.array([[0.9, 0.8, 0.6, 0.5]]), np.array([[0, 1, 2, 3]]), labels, own)
    np.testing.assert_array_equal(as_stranger.identities, [[1, 2]])
    found_stranger = decisions.top_two(np.array([[0.9, 0.8, 0.5, -np.inf]]), np.array([[0, 1, 3, -1]]), labels, own)
    assert decisions.agreement(found_stranger, as_stranger, floor=0.55)[0] == 0.0


def test_ties_count_as_agreeing():
    labels = np.array([0, 1])  # two identities with the same photo: either is a right answer
    exact = decisions.top_two(np.array([[0.7, 0.7]]), np.array([[0, 1]]), labels)
    found = decisions.top_two(np.array([[0.7, 0.7]]), np.array([[1, 0]]), labels)
    assert decisions.agreement(found, exact, floor=0.0) == (1.0, 1.0)


def test_top_two_and_agreement_match_a_plain_reference_on_random_neighbours():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 30, 200)
    m, k = 50, 12
    exact_pos = np.stack([rng.choice(200, k, replace=False) for _ in range(m)])
    exact_s = -np.sort(-rng.uniform(0, 1, (m, k)), axis=1)
    drop = rng.uniform(size=(m, k)) < 0.2  # the approximate search loses a fifth of the neighbours
    found_s = np.where(drop, -np.inf, exact_s)
    order = np.argsort(-found_s, axis=1, kind="stable")
    found_s = np.take_along_axis(found_s, order, 1)
    found_pos = np.take_along_axis(np.where(drop, -1, exact_pos), order, 1)
    own = labels[rng.integers(0, 200, m)]
    floor = 0.6
    for view in (None, own):
        e = decisions.top_two(exact_s, exact_pos, decisions.position_labels(labels, 200), view)
        f = decisions.top_two(found_s, found_pos, decisions.position_labels(labels, 200), view)
        agree = strict = 0
        for i in range(m):
            o = None if view is None else view[i]
            ref_e = reference_top_two(exact_s[i], exact_pos[i], labels, o)
            ref_f = reference_top_two(found_s[i], found_pos[i], labels, o)
            assert [name for name, _ in ref_e] == e.identities[i].tolist()
            assert [name for name, _ in ref_f] == f.identities[i].tolist()
            ok = [a[0] == b[0] or abs(a[1] - b[1]) <= 1e-5 or (a[1] == b[1] == -np.inf)
                  for a, b in zip(ref_f, ref_e)]
            strict += all(ok)
            agree += all(o_ or b[1] < floor for o_, b in zip(ok, ref_e))
        assert decisions.agreement(f, e, floor) == (agree / m, strict / m)
    assert 0 < agree < m  # the case exercises both outcomes


def test_floor_recall_counts_faces_at_or_above_the_floor():
    exact = np.array([[0.9, 0.8, 0.7, 0.2], [0.3, 0.2, 0.1, 0.0]])
    found = np.array([[0.9, 0.7, 0.2, -np.inf], [0.3, 0.1, -np.inf, -np.inf]])
    assert decisions.floor_recall(found, exact, 0.65) == pytest.approx(2 / 3)  # 0.8 missed
    assert decisions.floor_recall(found, exact, 0.95) == 1.0  # nothing to find


def test_floor_is_the_threshold_less_the_margin_between_the_one_and_ten_percent_points():
    strangers = np.random.default_rng(0).normal(0.4, 0.03, 5000)
    high, low = np.quantile(strangers, [0.99, 0.90])
    floor, threshold = decisions.estimate_floor(strangers)
    assert threshold == pytest.approx(high) and floor == pytest.approx(low)
    floor, threshold = decisions.estimate_floor(strangers, threshold=0.5)
    assert threshold == 0.5 and floor == pytest.approx(0.5 - (high - low))


def test_stranger_scores_skip_the_rows_own_identity():
    labels = np.array([7, 7, 8, 9])
    scores = np.array([[0.9, 0.8, 0.4, 0.3]])
    positions = np.array([[0, 1, 2, 3]])
    assert decisions.stranger_scores(scores, positions, labels, np.array([7]))[0] == 0.4
    assert decisions.stranger_scores(scores, positions, labels, None)[0] == 0.3  # 10th (here last) neighbour


# --- the tuner ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arcface():
    return arcface_like(3000, 4, seed=21)


@pytest.fixture(scope="module")
def tuned_both(arcface):
    """The same HNSW index tuned for the decisions and for recall@10 0.99, on the same held-out rows."""
    xb, labels = arcface
    spec = ann.choose_spec(len(xb), D, 1 << 34, kind="hnsw")
    held = ann.holdout_sample(len(xb), 600, seed=2)
    index = ann.build_segment_index(xb, spec, seed=2, exclude=held)
    out = {objective: ann.tune(index, dataclasses.replace(spec, objective=objective), xb, held, labels=labels)
           for objective in ("decisions", "recall")}
    return index, held, out


def test_decision_tuning_meets_its_target_with_a_smaller_ef_search_than_recall(tuned_both):
    _, _, tuned = tuned_both
    decided, recalled = tuned["decisions"], tuned["recall"]
    assert decided.target_met and decided.agreement >= 0.999 and decided.floor_recall >= 0.99
    assert decided.floor_source == "strangers" and decided.note is None
    assert decided.ef_search < recalled.ef_search, (decided, recalled)
    # HNSW searches 40 neighbours at efSearch >= 40 whatever is set: the value recorded is the one searched with.
    assert decided.ef_search >= decisions.DEPTH == ann_tuning.ladder(decided, decisions.DEPTH)[0]
    assert decided.recall < 0.99  # recall@10 over faces is reported, not the target
    assert recalled.objective == "recall" and recalled.recall >= 0.99


def test_reported_agreement_is_what_brute_force_gives_at_the_chosen_value(arcface, tuned_both):
    xb, labels = arcface
    index, held, tuned = tuned_both
    spec = tuned["decisions"]
    keep = np.setdiff1d(np.arange(len(xb)), held)
    q = xb[held]
    s = q @ xb[keep].T  # numpy brute force over the indexed rows
    order = np.argsort(-s, axis=1, kind="stable")[:, :decisions.DEPTH]
    exact_s, exact_pos = np.take_along_axis(s, order, 1), keep[order]
    found_s, found = ann.search(index, spec, q, decisions.DEPTH)
    found = np.where(found >= 0, keep[np.maximum(found, 0)], -1)  # HNSW ids: insertion order of `keep`
    codes = decisions.position_labels(labels, len(xb))
    both = [decisions.agreement(decisions.top_two(found_s, found, codes, own),
                                decisions.top_two(exact_s, exact_pos, codes, own), spec.floor)[0]
            for own in (None, labels[held])]
    assert np.mean(both) == pytest.approx(spec.agreement, abs=1e-6)
    assert decisions.floor_recall(found_s, exact_s, spec.floor) == pytest.approx(spec.floor_recall, abs=1e-6)


def test_without_labels_or_with_a_threshold_the_floor_says_where_it_came_from(arcface):
    xb, _ = arcface
    spec = ann.choose_spec(len(xb), D, 1 << 34, kind="ivf")
    _, unlabelled = ann.build_and_tune(xb, spec, seed=1, sample=300)
    assert unlabelled.floor_source == "neighbours" and unlabelled.agreement is not None
    _, calibrated = ann.build_and_tune(xb, spec, seed=1, sample=300, labels=np.zeros(len(xb), int) - 1,
                                       threshold=0.45)
    assert calibrated.floor_source == "calibration" and calibrated.floor < 0.45


def test_a_missed_decision_target_says_why_and_what_was_kept(arcface, caplog, monkeypatch):
    xb, labels = arcface
    monkeypatch.setattr(ann_tuning, "RERANK_MAX", 2)  # PQ4 re-ranked x2 cannot find every face above the floor
    spec = ann.IndexSpec("ivf", D, nlist=16, codes="pq4", target_recall=1.0, target_agreement=1.0)
    with caplog.at_level(logging.WARNING, logger="facesearch.index.storage.ann.tuning"):
        _, tuned = ann.build_and_tune(xb, spec, seed=0, sample=300, labels=labels)
    assert tuned.target_met is False and tuned.nprobe == 16 and tuned.rerank == 2
    assert tuned.note.endswith("at nprobe 16 (re-rank x2), the largest tried: kept it")
    assert f"floor recall {tuned.floor_recall:.4f} < 1" in tuned.note and tuned.note in caplog.text


# --- old records ------------------------------------------------------------------------------------


def test_an_old_spec_without_the_decision_fields_opens_as_tuned_for_recall():
    old = {"kind": "hnsw", "dim": 128, "hnsw_m": 32, "ef_construction": 40, "nlist": None, "codes": None,
           "ef_search": 576, "nprobe": None, "rerank": 1, "target_recall": 0.99, "recall": 0.992,
           "recall_at_1": 1.0, "recall_k": 10, "tune_sample": 1000, "target_met": True, "version": 1}
    spec = ann.IndexSpec.from_dict(old)
    assert spec.objective == "recall" and spec.ef_search == 576 and spec.agreement is None and spec.note is None
    assert ann.IndexSpec.from_dict(spec.to_dict()) == spec
    newer = ann.IndexSpec.from_dict(spec.to_dict() | {"objective": "decisions", "latency_ms": 0.4})
    assert newer.objective == "decisions"  # a field of a later facesearch is ignored
    with pytest.raises(IndexFormatError, match="objective must be one of"):
        ann.IndexSpec.from_dict(old | {"objective": "speed"})


def test_an_unreachable_target_keeps_the_smallest_value_that_reaches_what_the_largest_did():
    spec = ann.IndexSpec("hnsw", D, hnsw_m=32, ef_construction=40)

    def measured(agreement):
        return ann_tuning.Measurement(0.95, 1.0, agreement, 0.9, 1.0)

    # A plateau: 1024 already reaches within PLATEAU (0.002) of what 4096 does.
    tried = [(spec.with_search(v), measured(a)) for v, a in [(512, 0.990), (1024, 0.9975), (2048, 0.9978),
                                                             (4096, 0.998)]]
    kept, m = ann_tuning._cheapest_alike(tried, *tried[-1], "decisions")
    assert kept.ef_search == 1024 and m.agreement == 0.9975
    note = ann_tuning._shortfall(spec, *tried[-1], kept, m, 0.99)
    assert note == ("identity agreement 0.9980 < 0.999 at efSearch 4096, the largest tried; kept efSearch 1024, "
                    "the smallest within 0.002 of it (identity agreement 0.9975, floor recall 1.0000)")
    # Still climbing at the top: the largest is kept.
    climbing = tried[:-1] + [(spec.with_search(4096), measured(0.9997))]
    assert ann_tuning._cheapest_alike(climbing, *climbing[-1], "decisions")[0].ef_search == 2048
    steep = [(spec.with_search(v), measured(a)) for v, a in [(1024, 0.99), (2048, 0.994), (4096, 0.998)]]
    assert ann_tuning._cheapest_alike(steep, *steep[-1], "decisions")[0].ef_search == 4096
