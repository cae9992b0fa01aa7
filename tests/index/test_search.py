"""Search and identity ranking against numpy brute-force references and a hand-worked example."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from index_fakes import PixelEmbedder, TableEmbedder, make_gallery, write_photo

from facesearch.embedder.core.errors import IndexMismatchError
from facesearch.index import GalleryIndex, build_index, rank_identities
from facesearch.index.openset import ranking as search


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _check_against_brute_force(g: GalleryIndex, root: Path, emb: PixelEmbedder, queries: np.ndarray, k: int):
    all_ids = np.sort(faiss_ids(g))
    recs = g.records(all_ids)
    xb = emb.reference([root / r.path for r in recs])  # row i is the vector of all_ids[i]
    scores, ids = g.search(queries, k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64
    assert scores.shape == ids.shape == (len(queries), min(k, len(all_ids)))
    for qi, q in enumerate(queries):
        ref_scores = xb @ q
        order = np.argsort(-ref_scores, kind="stable")[:k]
        np.testing.assert_array_equal(all_ids[order], ids[qi])
        np.testing.assert_allclose(ref_scores[order], scores[qi], rtol=1e-5, atol=1e-6)


def faiss_ids(g: GalleryIndex) -> np.ndarray:
    """Every id stored in the gallery's FAISS index."""
    return g.ids()


def test_search_matches_numpy_brute_force_before_and_after_removals(tmp_path, model_dir, rng, store):
    # `store`: an index folder, then each kind of Milvus gallery (conftest.py): the same assertions on each.
    root = tmp_path / "photos"
    rels = make_gallery(root, {f"p{i:02d}": 10 for i in range(20)}, rng)
    emb = PixelEmbedder(model_dir)
    store.build(root, emb)
    queries = np.concatenate([_unit(rng.standard_normal((8, 16))),
                              emb.reference([root / rels[5], root / rels[77]])])
    with store.open() as g:
        assert len(g) == 200
        ids_before = {r.path: r.id for r in g.records(faiss_ids(g))}
        _check_against_brute_force(g, root, emb, queries, k=10)
        _, ids = g.search(queries[-2:], 1)  # a stored photo is its own nearest neighbour
        assert [r.path for r in g.records(ids[:, 0])] == [rels[5], rels[77]]

    for rel in rng.choice(rels, size=30, replace=False):
        (root / rel).unlink()
    report = store.build(root, emb)
    assert (report.removed, report.added, report.unchanged) == (30, 0, 170)
    with store.open() as g:
        assert len(g) == 170
        # ids of the photos that stayed are stable across updates
        assert all(ids_before[r.path] == r.id for r in g.records(faiss_ids(g)))
        _check_against_brute_force(g, root, emb, queries, k=10)
        _check_against_brute_force(g, root, emb, queries[:2], k=500)  # k > n returns all n


def test_save_load_round_trip_is_lossless_and_relocatable(tmp_path, gallery, embedder, rng):
    build_index(gallery, tmp_path / "idx", embedder)
    queries = _unit(rng.standard_normal((5, 16)))
    with GalleryIndex.open(tmp_path / "idx") as g:
        ids = faiss_ids(g)
        recs = g.records(ids)
        stored = np.stack([g.vectors([int(i)])[0] for i in ids])
        # vectors come back bit-identical to what the embedder returned
        np.testing.assert_array_equal(stored, embedder.reference([gallery / r.path for r in recs]))
        scores1, ids1 = g.search(queries, 4)
        recs1 = g.records(ids1.ravel())
    shutil.copytree(tmp_path / "idx", tmp_path / "moved")
    with GalleryIndex.open(tmp_path / "moved") as g2:
        scores2, ids2 = g2.search(queries, 4)
        assert g2.records(ids2.ravel()) == recs1
    np.testing.assert_array_equal(ids1, ids2)
    np.testing.assert_array_equal(scores1, scores2)


def test_search_checks_its_input(tmp_path, gallery, embedder):
    build_index(gallery, tmp_path / "idx", embedder)
    with GalleryIndex.open(tmp_path / "idx") as g:
        q = np.zeros((1, 16), np.float32)
        q[0, 0] = 1
        with pytest.raises(TypeError, match="float32.*float64"):
            g.search(q.astype(np.float64), 3)
        with pytest.raises(ValueError, match=r"shape \(m, 16\), got \(16,\)"):
            g.search(q[0], 3)
        with pytest.raises(IndexMismatchError, match="query vectors are 8-d but index .* holds 16-d"):
            g.search(q[:, :8].copy(), 3)
        with pytest.raises(ValueError, match="k must be a positive integer"):
            g.search(q, 0)
        with pytest.raises(KeyError, match=r"\[-1\]"):
            g.records([-1])
        scores, ids = g.search(np.asfortranarray(np.repeat(q, 3, axis=0)), 100)  # non-contiguous is fine
        assert scores.shape == (3, 9)
        assert sorted(ids[0].tolist()) == sorted(faiss_ids(g).tolist())


# --- identity ranking -------------------------------------------------------------------------

HAND_TABLE = np.array([
    [1.0, 0.0, 0.0],  # 0 alice/a1
    [0.8, 0.6, 0.0],  # 1 alice/a2
    [0.6, 0.8, 0.0],  # 2 bob/b1
    [0.0, 1.0, 0.0],  # 3 bob/b2
    [0.0, 0.0, 1.0],  # 4 carol/c1
], np.float32)


@pytest.fixture
def hand_index(tmp_path, model_dir, rng) -> Path:
    root = tmp_path / "hand"
    for key, rel in enumerate(["alice/a1.png", "alice/a2.png", "bob/b1.png", "bob/b2.png", "carol/c1.png"]):
        write_photo(root / rel, rng, key=key)
    build_index(root, tmp_path / "hand-idx", TableEmbedder(model_dir, HAND_TABLE))
    return tmp_path / "hand-idx"


def test_rank_identities_hand_worked_example(hand_index):
    with GalleryIndex.open(hand_index) as g:
        # q . rows = [0.6, 0.96, 1.0, 0.8, 0.0]: bob 1.0 (b1), alice 0.96 (a2), carol 0.0 (c1)
        r = rank_identities(g, np.array([0.6, 0.8, 0.0], np.float32), k=5, threshold=0.5)
        assert [(m.identity, m.path) for m in r.matches] == [
            ("bob", "bob/b1.png"), ("alice", "alice/a2.png"), ("carol", "carol/c1.png")]  # k > 3 identities
        np.testing.assert_allclose([m.score for m in r.matches], [1.0, 0.96, 0.0], atol=1e-6)
        assert (r.identity, r.verdict, r.matches[0].box) == ("bob", "bob", None)
        assert [m.identity for m in rank_identities(g, np.array([[0.6, 0.8, 0.0]], np.float32), k=1).matches] == ["bob"]

        # q . rows = [0, 0.36, 0.48, 0.6, 0.8]: carol 0.8, bob 0.6 (b2, not b1), alice 0.36 (a2)
        q = np.array([0.0, 0.6, 0.8], np.float32)
        r = rank_identities(g, q, k=3, threshold=0.9)
        assert [(m.identity, m.path) for m in r.matches] == [
            ("carol", "carol/c1.png"), ("bob", "bob/b2.png"), ("alice", "alice/a2.png")]
        assert (r.identity, r.verdict) == (None, "unknown")
        d = json.loads(json.dumps(r.to_dict()))
        assert d["verdict"] == "unknown" and d["known"] is False and d["identity"] is None
        assert d["threshold"] == 0.9 and [m["identity"] for m in d["matches"]] == ["carol", "bob", "alice"]
        assert set(d["matches"][0]) == {"identity", "score", "path", "box", "id"}

        top = r.matches[0].score
        assert rank_identities(g, q, k=3, threshold=top).identity == "carol"  # a score equal to the threshold matches
        assert rank_identities(g, q, k=3, threshold=np.nextafter(top, 2)).identity is None
        assert rank_identities(g, q, k=3).threshold == g.card.default_threshold  # 0.3: carol matches
        assert rank_identities(g, q, k=3).verdict == "carol"


def test_rank_identities_widens_until_k_identities(tmp_path, model_dir, rng, store):
    dave = [_unit([1.0, 0.01 * i, 0.0]) for i in range(1, 31)]  # 30 faces, all scoring > 0.95
    others = {"erin": _unit([0.9, 0.0, np.sqrt(0.19)]), "frank": _unit([0.5, 0.0, np.sqrt(0.75)]),
              "gina": _unit([0.0, 1.0, 0.0])}
    table = np.stack(dave + list(others.values()))
    root = tmp_path / "wide"
    for key in range(30):
        write_photo(root / "dave" / f"{key:02d}.png", rng, key=key)
    for key, name in enumerate(others, start=30):
        write_photo(root / name / "0.png", rng, key=key)
    store.build(root, TableEmbedder(model_dir, table))
    with store.open() as g:
        r = rank_identities(g, np.array([1, 0, 0], np.float32), k=3, threshold=0.5)
        assert [m.identity for m in r.matches] == ["dave", "erin", "frank"]
        np.testing.assert_allclose([m.score for m in r.matches], [dave[0][0], 0.9, 0.5], rtol=1e-6)
        assert r.matches[0].path == "dave/00.png"
        assert r.searched == 33  # 12 neighbours were all dave: widened to the whole index
        assert [m.identity for m in rank_identities(g, np.array([1, 0, 0], np.float32), k=1).matches] == ["dave"]


def test_rank_identities_matches_numpy_reference(tmp_path, model_dir, rng, store):
    n, d = 300, 8
    table = _unit(rng.standard_normal((n, d)))
    # skewed identity sizes: a few large identities, many small ones
    who = [f"id{min(int(rng.pareto(1.0)), 25):02d}" for _ in range(n)]
    root = tmp_path / "rand"
    for key in range(n):
        write_photo(root / who[key] / f"{key:03d}.png", rng, key=key)
    store.build(root, TableEmbedder(model_dir, table))
    with store.open() as g:
        for q in _unit(rng.standard_normal((10, d))):
            s = table @ q
            best: dict[str, tuple[float, int]] = {}
            for key in np.argsort(-s, kind="stable"):
                best.setdefault(who[key], (float(s[key]), int(key)))
            ref = sorted(best.items(), key=lambda kv: -kv[1][0])
            for k in (1, 3, 10, 50):
                r = rank_identities(g, q, k=k, threshold=0.5, oversample=1)
                assert [m.identity for m in r.matches] == [name for name, _ in ref[:k]]
                np.testing.assert_allclose([m.score for m in r.matches], [v[0] for _, v in ref[:k]], rtol=1e-5)
                assert [m.path for m in r.matches] == [f"{who[v[1]]}/{v[1]:03d}.png" for _, v in ref[:k]]
                assert r.verdict == (ref[0][0] if ref[0][1][0] >= 0.5 else "unknown")


def test_face_identities_table_answers_as_a_dict_would():
    rng = np.random.default_rng(5)
    ids = rng.choice(10_000, 600, replace=False)  # not in order: the table sorts them
    names = [f"person{int(i) % 37}" for i in rng.integers(0, 1000, 600)]
    reference = dict(zip(ids.tolist(), names))
    table = search.FaceIdentities(zip(ids.tolist(), names), chunk=64)  # several chunks
    assert len(table) == 600
    assert all(table[i] == name for i, name in reference.items())
    for name in set(names):
        np.testing.assert_array_equal(table.ids_of(name), sorted(i for i, n in reference.items() if n == name))
    probe = np.array([[ids[0], ids[5], -1], [ids[7], -1, -1]])
    assert table.names_of(probe) == [[reference[ids[0]], reference[ids[5]], None], [reference[ids[7]], None, None]]
    missing = next(i for i in range(10_000) if i not in reference)
    with pytest.raises(KeyError):
        table[missing]
    with pytest.raises(KeyError):
        table.names_of(np.array([[ids[0], missing]]))
    with pytest.raises(KeyError):
        table.ids_of("nobody")
    empty = search.FaceIdentities([])
    assert len(empty) == 0 and empty.names_of(np.array([[-1, -1]])) == [[None, None]]
