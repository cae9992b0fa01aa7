"""facesearch.index.storage.ann: each index kind against numpy brute force on clustered data, filters, tuning, rules, files."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import faiss
import numpy as np
import pytest

from facesearch.embedder.core.errors import FaceSearchError, IndexFormatError
from facesearch.index.storage import ann
from facesearch.index.storage.ann import build as ann_build
from facesearch.index.storage.ann import tuning as ann_tuning
from facesearch.index.storage.ann.rules import FLAT_MAX_FLOATS, HNSW_MAX_N, IVF_FLAT_MAX_N

D = 32
MIB = 1 << 20


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def clustered(n: int, seed: int, d: int = D, per_identity: int = 8) -> tuple[np.ndarray, np.ndarray, callable]:
    """Face-like unit vectors: identity centres around a common direction, photos = centre + noise.

    Same identity: cosine ~0.9; different identities ~0.5. Returns (vectors, identity of each
    row, photos(m, seed) drawing fresh photos of the same identities).
    """
    rng = np.random.default_rng(seed)
    centres = _unit(0.7 * _unit(rng.standard_normal(d)) + 0.7 * _unit(rng.standard_normal((n // per_identity, d))))
    ident = rng.integers(0, len(centres), n)

    def photos(idx: np.ndarray, r: np.random.Generator) -> np.ndarray:
        return _unit(centres[idx] + r.standard_normal((len(idx), d)).astype(np.float32) * 0.33 / np.sqrt(d))

    def fresh(m: int, s: int) -> np.ndarray:
        r = np.random.default_rng(s)
        return photos(r.integers(0, len(centres), m), r)

    return photos(ident, rng), ident, fresh


def brute_force(xb: np.ndarray, queries: np.ndarray, k: int, alive: np.ndarray | None = None):
    scores = queries @ np.asarray(xb, np.float32).T
    if alive is not None:
        scores[:, ~alive] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def spec_of(kind: str, n: int, codes: str | None = None, target: float = 0.95,
            objective: str = "recall") -> ann.IndexSpec:
    """An untuned spec of `kind` (IVF codes forced with a budget just above their size), tuned for
    recall@10 unless asked otherwise: this module tests the ladder against recall, the decision
    objective has tests/index/test_ann_decisions.py."""
    budget = 1 << 40
    if codes:
        nlist = ann.ivf_nlist(n)
        budget = ann.ivf_bytes(n, D, nlist, codes)
    spec = ann.choose_spec(n, D, budget, kind=kind, target_recall=target)
    assert codes is None or spec.codes == codes, spec
    return dataclasses.replace(spec, objective=objective)


pytestmark = pytest.mark.usefixtures("one_faiss_thread")  # tests/index/conftest.py


@pytest.fixture(scope="module")
def gallery():
    return clustered(4000, seed=7)


@pytest.fixture(scope="module")
def built(gallery):
    """One tuned index per approximate kind over `gallery`, built once for the module."""
    xb = gallery[0]
    out = {}
    for name, kind, codes in [("hnsw", "hnsw", None), ("ivf-flat", "ivf", "flat"), ("ivf-sq8", "ivf", "sq8")]:
        out[name] = ann.build_and_tune(xb, spec_of(kind, len(xb), codes), seed=3)
    # choose_spec keeps PQ for >= 9,984 training rows (256 per codebook x 39); forced here on 4,000.
    pq = ann.IndexSpec("ivf", D, nlist=ann.ivf_nlist(len(xb)), codes="pq8", rerank=8, target_recall=0.95,
                        objective="recall")
    out["ivf-pq"] = ann.build_and_tune(xb, pq, seed=3)
    return out


# --- each kind against brute force ------------------------------------------------------------


def test_flat_is_exact_on_float32_and_on_a_float16_memmap(gallery, tmp_path):
    xb, _, fresh = gallery
    q = fresh(20, 1)
    spec = ann.choose_spec(len(xb), D, 1 << 30)
    assert spec.kind == "flat" and spec.recall == 1.0
    for vectors in (xb, _memmap(tmp_path / "v16.npy", xb, np.float16)):
        index, tuned = ann.build_and_tune(vectors, spec, seed=0)
        assert tuned.tune_sample == 0 and tuned.target_met
        scores, positions = ann.search(index, tuned, q, 10)
        ref_scores, ref_positions = brute_force(vectors, q, 10)
        np.testing.assert_array_equal(positions, ref_positions)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["hnsw", "ivf-flat", "ivf-sq8", "ivf-pq"])
def test_approximate_kinds_reach_the_tuned_recall_on_fresh_queries(gallery, built, name):
    xb, _, fresh = gallery
    index, spec = built[name]
    assert spec.target_met and spec.recall >= spec.target_recall == 0.95
    assert spec.tune_sample == 400 and spec.recall_k == 10 and index.ntotal == len(xb)
    q = fresh(300, 2)
    _, positions = ann.search(index, spec, q, 10, raw=xb)
    _, truth = brute_force(xb, q, 10)
    # Fresh queries are not the tuning sample: allow its sampling error (~0.01 at 400 x 10).
    assert recall(positions, truth) >= spec.target_recall - 0.015, spec


@pytest.mark.parametrize("name", ["hnsw", "ivf-flat"])
def test_held_out_rows_are_added_back_at_their_positions(gallery, built, name):
    xb, _, _ = gallery
    index, spec = built[name]
    held = ann.holdout_sample(len(xb), 1000, seed=3)
    assert held.size == 400
    _, positions = ann.search(index, spec, xb[held], 1)
    np.testing.assert_array_equal(positions[:, 0], held)  # each held-out row finds itself


@pytest.mark.parametrize("name", ["ivf-sq8", "ivf-pq"])
def test_lossy_codes_are_reranked_to_exact_scores(gallery, built, tmp_path, name):
    xb, _, fresh = gallery
    index, spec = built[name]
    raw16 = _memmap(tmp_path / "raw.npy", xb, np.float16)
    q = fresh(50, 3)
    for raw in (xb, raw16):
        scores, positions = ann.search(index, spec, q, 10, raw=raw)
        assert (positions >= 0).all()
        exact = np.einsum("md,mkd->mk", q, np.asarray(raw, np.float32)[positions])
        np.testing.assert_allclose(scores, exact, rtol=1e-5, atol=1e-6)
        assert (np.diff(scores, axis=1) <= 0).all()
    with pytest.raises(ann.AnnInputError, match="pass raw="):
        ann.search(index, spec, q, 10)


# --- deletion filter --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["bitmap", "batch"])
def test_flat_filter_equals_brute_force_over_live_rows(gallery, method):
    xb, _, fresh = gallery
    rng = np.random.default_rng(5)
    alive = rng.random(len(xb)) > 0.3
    spec = ann.choose_spec(len(xb), D, 1 << 30)
    index = ann.build_segment_index(xb, spec)
    q = fresh(20, 4)
    live = ann.LiveFilter(alive, method)
    assert (live.n_total, live.n_live) == (len(xb), alive.sum())
    scores, positions = ann.search(index, spec, q, 10, alive=live)
    ref_scores, ref_positions = brute_force(xb, q, 10, alive)
    np.testing.assert_array_equal(positions, ref_positions)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
    _, from_mask = ann.search(index, spec, q, 10, alive=alive)  # a plain mask works too
    np.testing.assert_array_equal(from_mask, positions)


@pytest.mark.parametrize("name", ["hnsw", "ivf-flat", "ivf-sq8"])
@pytest.mark.parametrize("dead_share, method", [(0.005, "batch"), (0.3, "bitmap")])
def test_dead_positions_are_never_returned(gallery, built, name, dead_share, method):
    xb, _, _ = gallery
    index, spec = built[name]
    rng = np.random.default_rng(6)
    dead = rng.choice(len(xb), size=int(dead_share * len(xb)), replace=False)
    live = ann.LiveFilter.from_dead(dead, len(xb), method)
    q = xb[dead[:40]]  # the dead rows themselves: unfiltered, each would come first
    _, positions = ann.search(index, spec, q, 10, alive=live, raw=xb)
    assert not np.isin(positions, dead).any()
    assert (positions >= 0).all()
    if name == "ivf-flat":  # visiting every list, IVF-Flat with a filter is exact over the live rows
        alive = np.ones(len(xb), bool)
        alive[dead] = False
        _, positions = ann.search(index, spec.with_search(spec.nlist), q, 10, alive=live, raw=xb)
        np.testing.assert_array_equal(positions, brute_force(xb, q, 10, alive)[1])


@pytest.mark.parametrize("name", ["flat", "ivf-flat", "ivf-sq8"])
def test_k_beyond_the_live_rows_pads_with_minus_one_and_minus_inf(gallery, built, name):
    xb, _, fresh = gallery
    if name == "flat":
        spec = ann.choose_spec(len(xb), D, 1 << 30)
        index = ann.build_segment_index(xb, spec)
    else:
        index, spec = built[name]
        spec = spec.with_search(spec.nlist)
    alive = np.zeros(len(xb), bool)
    alive[[3, 500, 2500, 3999]] = True
    q = fresh(3, 5)
    scores, positions = ann.search(index, spec, q, 10, alive=alive, raw=xb)
    assert scores.shape == positions.shape == (3, 10) and scores.dtype == np.float32
    np.testing.assert_array_equal(np.sort(positions[:, :4], axis=1), [[3, 500, 2500, 3999]] * 3)
    assert (positions[:, 4:] == -1).all() and np.isneginf(scores[:, 4:]).all() and np.isfinite(scores[:, :4]).all()
    scores, positions = ann.search(index, spec, q, 5, alive=np.zeros(len(xb), bool), raw=xb)
    assert (positions == -1).all() and np.isneginf(scores).all()


def test_one_query_is_searched_on_one_thread(built):
    index, spec = built["hnsw"]
    seen = []

    class Probe:  # records the OpenMP threads FAISS would use, then answers like the real index
        ntotal = index.ntotal

        def search(self, q, k, params=None):
            seen.append(faiss.omp_get_max_threads())
            return index.search(q, k, params=params)

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        q = np.zeros((2, D), np.float32)
        ann.search(Probe(), spec, q[:1], 5)
        ann.search(Probe(), spec, q, 5)
        assert seen == [1, 2] and faiss.omp_get_max_threads() == 2
    finally:
        faiss.omp_set_num_threads(before)


def test_filter_must_cover_the_index(built):
    index, spec = built["hnsw"]
    with pytest.raises(ann.AnnInputError, match="covers 10 positions, the index holds 4000"):
        ann.search(index, spec, np.zeros((1, D), np.float32), 5, alive=np.ones(10, bool))


# --- tuning -----------------------------------------------------------------------------------


def test_tuning_climbs_the_ladder_until_the_target(gallery):
    xb, _, _ = gallery
    spec = spec_of("ivf", len(xb), "flat", target=0.99)
    held = ann.holdout_sample(len(xb), 300, seed=1)
    index = ann.build_segment_index(xb, spec, seed=1, exclude=held)
    assert index.ntotal == len(xb) - 300
    steps = []
    tuned = ann.tune(index, spec, xb, held, progress=lambda *a: steps.append(a))
    ladder = ann_tuning.ladder(spec)
    assert ladder == [1, 2, 4, 8, 16, 32, 64]
    assert tuned.target_met and tuned.recall >= 0.99 and tuned.tune_sample == 300
    queries = xb[held]
    truth, _ = ann.exact_knn(xb, queries, 10, exclude=held)

    def recall_with(nprobe):
        _, found = ann.search(index, tuned.with_search(nprobe), queries, 10)
        return ann.recall_at(found, queries, xb, truth, 10)

    assert recall_with(tuned.nprobe) == pytest.approx(tuned.recall, abs=1e-6)
    rung = min(v for v in ladder if v >= tuned.nprobe)
    assert rung // 2 < tuned.nprobe <= rung
    if tuned.nprobe > 1:  # bisected to within 1/8 of a doubling: that much less misses the target
        below = max(rung // 2, tuned.nprobe - max(1, rung // 16))
        assert recall_with(below) < 0.99
    assert steps[0] == ("tune", 0, len(ladder)) and steps[-1] == ("tune", len(ladder), len(ladder))
    with pytest.raises(ann.AnnInputError, match="build with exclude=holdout"):
        ann.tune(ann.build_segment_index(xb, spec, seed=1), spec, xb, held)


def test_tuning_says_when_the_target_is_out_of_reach(gallery, caplog, monkeypatch):
    xb, _, _ = gallery
    # PQ with 4 bytes per vector and at most 2x re-ranking cannot find every exact neighbour.
    monkeypatch.setattr(ann_tuning, "RERANK_MAX", 2)
    spec = ann.IndexSpec("ivf", D, nlist=16, codes="pq4", target_recall=1.0, objective="recall")
    with caplog.at_level(logging.WARNING, logger="facesearch.index.storage.ann.tuning"):
        _, tuned = ann.build_and_tune(xb, spec, seed=0, sample=200)
    assert tuned.target_met is False and tuned.nprobe == 16 and tuned.rerank == 2 and tuned.recall < 1.0
    assert tuned.note == f"recall@10 {tuned.recall:.4f} < 1 at nprobe 16 (re-rank x2), the largest tried: kept it"
    assert tuned.note in caplog.text


def test_tuning_raises_reranking_when_lossy_codes_stall(gallery):
    xb, _, fresh = gallery
    spec = ann.IndexSpec("ivf", D, nlist=16, codes="pq4", rerank=1, target_recall=0.97, objective="recall")
    index, tuned = ann.build_and_tune(xb, spec, seed=0, sample=300)
    assert tuned.target_met and tuned.rerank > 1, tuned
    q = fresh(200, 11)
    _, truth = brute_force(xb, q, 10)
    _, low = ann.search(index, dataclasses.replace(tuned, rerank=1), q, 10, raw=xb)
    _, high = ann.search(index, tuned, q, 10, raw=xb)
    assert recall(low, truth) < 0.9 < 0.95 <= recall(high, truth)


def test_recall_counts_ties_as_found():
    xb = _unit(np.random.default_rng(0).standard_normal((6, D)))
    xb = np.concatenate([xb, xb[:1]])  # row 6 duplicates row 0
    q = xb[:1]
    truth, positions = ann.exact_knn(xb, q, 1)
    assert positions[0, 0] in (0, 6)
    for other in (0, 6):
        assert ann.recall_at(np.array([[other]]), q, xb, truth, 1) == 1.0
    assert ann.recall_at(np.array([[1]]), q, xb, truth, 1) == 0.0


def test_exact_knn_reads_in_chunks_and_skips_excluded_rows(gallery, monkeypatch):
    xb, _, fresh = gallery
    monkeypatch.setattr(ann_tuning, "CHUNK_ROWS", 999)
    q = fresh(10, 8)
    skip = np.arange(0, len(xb), 3)
    alive = np.ones(len(xb), bool)
    alive[skip] = False
    scores, positions = ann.exact_knn(xb, q, 7, exclude=skip)
    ref_scores, ref_positions = brute_force(xb, q, 7, alive)
    np.testing.assert_array_equal(positions, ref_positions)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)


# --- building ---------------------------------------------------------------------------------


def test_build_streams_chunks_and_reports_progress(gallery, tmp_path, monkeypatch):
    xb, _, fresh = gallery
    spec = spec_of("ivf", len(xb), "sq8").with_search(8)
    whole = ann.build_segment_index(xb, spec, seed=4)
    monkeypatch.setattr(ann_build, "CHUNK_ROWS", 512)
    calls = []
    chunked = ann.build_segment_index(_memmap(tmp_path / "v.npy", xb, np.float32), spec, seed=4,
                                      progress=lambda *a: calls.append(a))
    q = fresh(20, 9)
    for a, b in zip(ann.search(whole, spec, q, 10, raw=xb), ann.search(chunked, spec, q, 10, raw=xb)):
        np.testing.assert_array_equal(a, b)  # same seed, same sample: the same index
    adds = [c for c in calls if c[0] == "add"]
    assert adds[0] == ("add", 0, 4000) and adds[-1] == ("add", 4000, 4000) and len(adds) == 1 + 8
    assert calls[0] == ("train", 0, ann.train_size(4000, spec.nlist))


def test_two_level_training_places_every_list(gallery, monkeypatch):
    xb, _, fresh = gallery
    monkeypatch.setattr(ann_build, "TWO_LEVEL_MIN_NLIST", 2)
    spec = spec_of("ivf", len(xb), "flat")
    index, tuned = ann.build_and_tune(xb, spec, seed=2, sample=300)
    ivf = faiss.extract_index_ivf(index)
    sizes = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)])
    assert ivf.quantizer.ntotal == spec.nlist and (sizes > 0).mean() > 0.9
    assert tuned.target_met


def test_memory_estimates_are_close_to_faiss_sizes(gallery, built):
    xb, _, _ = gallery
    n = len(xb)
    flat = ann.build_segment_index(xb, ann.choose_spec(n, D, 1 << 30))
    cases = [(flat, ann.flat_bytes(n, D))] + [
        (index, ann.estimate_memory(spec, n)) for index, spec in built.values()]
    for index, estimate in cases:
        actual = faiss.serialize_index(index).nbytes
        assert 0.85 < estimate / actual < 1.15, (type(index).__name__, estimate, actual)


# --- choosing ---------------------------------------------------------------------------------

N_FLAT = FLAT_MAX_FLOATS // 128
H32 = ann.hnsw_bytes(1_000_000, 128, 32)
H8 = ann.hnsw_bytes(1_000_000, 128, 8)


def _ivf(n: int, codes: str) -> int:
    return ann.ivf_bytes(n, 128, ann.ivf_nlist(n), codes)


@pytest.mark.parametrize("n, budget, kind, expected", [
    (N_FLAT, 1 << 30, "auto", ("flat",)),                       # flat up to the measured threshold
    (N_FLAT + 1, 1 << 30, "auto", ("hnsw", 32)),                 # then HNSW with M = 32 ...
    (1_000_000, H32, "auto", ("hnsw", 32)),
    (1_000_000, H32 - 1, "auto", ("hnsw", 31)),                  # ... or the M that fits
    (1_000_000, H8, "auto", ("hnsw", 8)),
    (1_000_000, H8 - 1, "auto", ("ivf", 16384, "sq8", 2)),        # M < 8: IVF
    (HNSW_MAX_N, 1 << 40, "auto", ("hnsw", 32)),
    (HNSW_MAX_N + 1, 1 << 40, "auto", ("ivf", 16384, "sq8", 2)),  # too slow to build as HNSW
    (HNSW_MAX_N + 1, 1 << 40, "hnsw", ("hnsw", 32)),              # unless asked for
    (IVF_FLAT_MAX_N - 1, 1 << 40, "ivf", ("ivf", 4096, "flat", 1)),
    (IVF_FLAT_MAX_N - 1, _ivf(IVF_FLAT_MAX_N - 1, "flat") - 1, "ivf", ("ivf", 4096, "sq8", 2)),
    (IVF_FLAT_MAX_N, 1 << 40, "ivf", ("ivf", 16384, "sq8", 2)),   # autofaiss: quantised from 1M
    (10_000_000, _ivf(10_000_000, "sq8"), "auto", ("ivf", 16384, "sq8", 2)),
    (10_000_000, _ivf(10_000_000, "sq8") - 1, "auto", ("ivf", 16384, "pq64", 8)),
    (10_000_000, _ivf(10_000_000, "pq8"), "auto", ("ivf", 16384, "pq8", 8)),
    (10_000_000, 6 << 30, "auto", ("ivf", 16384, "sq8", 2)),      # the default budget on 24 GiB
    (1000, 1 << 30, "ivf", ("ivf", 16, "flat", 1)),               # >= 39 training points per list
    (1000, 1 << 30, "hnsw", ("hnsw", 32)),
    (5000, 1 << 30, "flat", ("flat",)),
])
def test_choose_spec_rules(n, budget, kind, expected):
    spec = ann.choose_spec(n, 128, budget, kind=kind)
    got = {"flat": (spec.kind,), "hnsw": (spec.kind, spec.hnsw_m),
           "ivf": (spec.kind, spec.nlist, spec.codes, spec.rerank)}[spec.kind]
    assert got == expected
    assert ann.estimate_memory(spec, n) <= budget
    assert spec.ef_search is None and spec.nprobe is None  # left for tuning


@pytest.mark.parametrize("n, budget, kind, message", [
    (1000, 1000, "flat", r"a flat index for 1,000 128-d vectors needs about 0\.5 MiB"),
    (10**6, H8 - 1, "hnsw", "HNSW \\(M=8\\)"),
    (10**7, _ivf(10**7, "pq4") - 1, "auto", "raise --memory-budget"),
])
def test_choose_spec_refuses_what_does_not_fit(n, budget, kind, message):
    with pytest.raises(ann.MemoryBudgetError, match=message):
        ann.choose_spec(n, 128, budget, kind=kind)


def test_ivf_lists_follow_autofaiss():
    assert [ann.ivf_nlist(n) for n in (10_000, 100_000, 500_000, 999_999, 1_000_000, 10**7, 10**8)] == \
        [256, 1024, 2048, 4096, 16384, 16384, 16384]
    assert ann.train_size(10**6, 16384) == 10**6 and ann.train_size(10**7, 16384) == 1_638_400


def test_default_memory_budget_is_a_quarter_of_memory():
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < ann.default_memory_budget() <= total // 4


# --- spec ---------------------------------------------------------------------------------------


def test_spec_json_round_trip(built):
    for _, spec in built.values():
        again = ann.IndexSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
        assert again == spec


@pytest.mark.parametrize("change, message", [
    ({"version": 2}, "version 2 is not one this facesearch reads"),
    ({"kind": "lsh"}, "kind must be one of"),
    ({"nlist": 0}, "nlist must be an integer >= 1"),
    ({"codes": "pq5"}, "pq5 needs a dimension divisible by 5"),
    ({"hnsw_m": 16}, "hnsw_m does not apply to ivf indexes"),
    ({"recall": 1.5}, r"recall must be a number in \[0, 1\]"),
    ({"objective": "speed"}, "objective must be one of"),
    ({"floor_source": "guess"}, "floor_source must be one of"),
    ({"agreement": -0.1}, r"agreement must be a number in \[0, 1\]"),
])
def test_spec_from_dict_refuses_bad_records(built, change, message):
    record = built["ivf-sq8"][1].to_dict() | change
    with pytest.raises(IndexFormatError, match=message):
        ann.IndexSpec.from_dict(record)
    with pytest.raises(IndexFormatError, match="lacks"):
        ann.IndexSpec.from_dict({"version": 1, "kind": "flat"})


# --- files --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["flat", "hnsw", "ivf-flat", "ivf-pq"])
@pytest.mark.parametrize("mmap", [True, False])
def test_write_read_round_trip(gallery, built, tmp_path, name, mmap):
    xb, _, fresh = gallery
    if name == "flat":
        spec = ann.choose_spec(len(xb), D, 1 << 30)
        index = ann.build_segment_index(xb, spec)
    else:
        index, spec = built[name]
    path = tmp_path / "seg.ann"
    ann.write_index(index, path)
    assert [p.name for p in tmp_path.iterdir()] == ["seg.ann"]  # no temporary left behind
    again = ann.read_index(path, spec, mmap=mmap)
    q = fresh(20, 10)
    alive = np.random.default_rng(1).random(len(xb)) > 0.1
    for a, b in zip(ann.search(index, spec, q, 10, alive=alive, raw=xb),
                    ann.search(again, spec, q, 10, alive=alive, raw=xb)):
        np.testing.assert_array_equal(a, b)
    if hasattr(faiss, "IO_FLAG_MMAP_IFC"):
        assert _owns_its_vectors(again) is (not mmap)


def test_write_is_atomic(gallery, built, tmp_path, monkeypatch):
    index, spec = built["ivf-flat"]
    path = tmp_path / "seg.ann"
    ann.write_index(index, path)
    before = path.read_bytes()

    def broken(index, name):
        with open(name, "wb") as f:
            f.write(b"half")
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        ann.write_index(index, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["seg.ann"]


def test_read_refuses_a_file_that_is_not_its_spec(built, tmp_path):
    index, spec = built["ivf-sq8"]
    path = tmp_path / "seg.ann"
    ann.write_index(index, path)
    with pytest.raises(IndexFormatError, match="IndexIVFScalarQuantizer, not an IndexIVFFlat"):
        ann.read_index(path, built["ivf-flat"][1])
    with pytest.raises(IndexFormatError, match="IndexIVFScalarQuantizer, not an IndexHNSWFlat"):
        ann.read_index(path, built["hnsw"][1])
    with pytest.raises(IndexFormatError, match="holds 32-d vectors"):
        ann.read_index(path, ann.IndexSpec("ivf", 64, nlist=spec.nlist, codes="sq8", rerank=2))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(IndexFormatError, match="missing or damaged"):
        ann.read_index(path, spec)
    with pytest.raises(IndexFormatError, match="missing or damaged"):
        ann.read_index(tmp_path / "absent.ann", spec)


# --- bad inputs -------------------------------------------------------------------------------


def test_bad_vectors_are_refused_with_the_row(gallery):
    xb, _, _ = gallery
    spec = spec_of("hnsw", len(xb))
    bad = xb.copy()
    bad[17, 3] = np.nan
    with pytest.raises(ann.AnnInputError, match="row 17 holds NaN"):
        ann.build_segment_index(bad, spec)
    bad = xb.copy()
    bad[1234] *= 3
    with pytest.raises(ann.AnnInputError, match="row 1234 has L2 norm 3, expected 1"):
        ann.build_segment_index(bad, spec)
    for vectors, message in [(xb.astype(np.int32), "must be float16, float32 or float64, got int32"),
                             (xb[:, :16], "are 16-d, the index spec says 32-d"),
                             (xb[0], r"non-empty \(n, d\) array, got shape \(32,\)"),
                             (list(xb), "must be a numpy array")]:
        with pytest.raises(ann.AnnInputError, match=message):
            ann.build_segment_index(vectors, spec)
    with pytest.raises(ann.AnnInputError, match=r"exclude must lie in \[0, 4000\)"):
        ann.build_segment_index(xb, spec, exclude=[4000])
    with pytest.raises(ann.AnnInputError, match="cannot leave rows out"):
        ann.build_segment_index(xb, ann.choose_spec(len(xb), D, 1 << 30), exclude=[1])
    partial = ann.build_segment_index(xb, spec, exclude=[5, 6])
    with pytest.raises(ann.AnnInputError, match="add exactly the rows that `exclude` left out"):
        ann.add_positions(partial, spec, xb, [5])


def test_bad_queries_and_arguments_are_refused(built):
    index, spec = built["hnsw"]
    q = np.zeros((2, D), np.float32)
    for call, message in [
        (lambda: ann.search(index, spec, q[0], 5), r"shape \(m, 32\), got \(32,\): pass one query as x\[None, :\]"),
        (lambda: ann.search(index, spec, q[:, :8], 5), r"shape \(m, 32\), got \(2, 8\)"),
        (lambda: ann.search(index, spec, q + np.nan, 5), "NaN or infinity"),
        (lambda: ann.search(index, spec, q.astype(int), 5), "got int64"),
        (lambda: ann.search(index, spec, q, 0), "k must be >= 1, got 0"),
        (lambda: ann.search(index, spec, q, 2.5), "k must be an integer"),
        (lambda: ann.search(index, spec, q, 5, alive=np.ones(4000)), "1-d bool array"),
        (lambda: ann.LiveFilter(np.ones(5, bool), "magic"), r"one of \('bitmap', 'batch'\)"),
        (lambda: ann.choose_spec(0, 128, 1 << 30), "n must be >= 1"),
        (lambda: ann.choose_spec(10, 128, 1 << 30, kind="lsh"), "auto, flat, hnsw or ivf"),
        (lambda: ann.choose_spec(10, 128, 1 << 30, target_recall=0), "target_recall"),
        (lambda: ann.tune(index, ann.choose_spec(10, D, 1 << 30), np.zeros((10, D), np.float32), []),
         "nothing to tune"),
    ]:
        with pytest.raises(ann.AnnInputError, match=message):
            call()
    assert issubclass(ann.AnnInputError, FaceSearchError) and issubclass(ann.MemoryBudgetError, FaceSearchError)


# --- helpers --------------------------------------------------------------------------------


def _memmap(path, x: np.ndarray, dtype) -> np.ndarray:
    np.save(path, x.astype(dtype))
    return np.load(path, mmap_mode="r")


def _owns_its_vectors(index: faiss.Index) -> bool:
    """Whether FAISS copied the index's vectors into memory (False: they are mapped from the file)."""
    if isinstance(index, faiss.IndexHNSW):
        index = faiss.downcast_index(index.storage)
    if isinstance(index, faiss.IndexFlatCodes):
        return bool(index.codes.is_owned)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    return bool(lists.codes.at(0).is_owned)
