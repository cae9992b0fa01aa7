"""People clustering: the rules, a hand-worked graph, synthetic people whose truth is known, the k-NN
graph against numpy, incremental assignment, pinned labels, suggestions and the threshold rule."""

from __future__ import annotations

import numpy as np
import pytest

from facesearch.embedder.core.errors import FaceSearchError
from facesearch.index.people import clustering
from facesearch.index.people.clustering import (
    ClusterInputError,
    ClusterParams,
    agglomerate,
    assign,
    background_of,
    cluster,
    knn_graph,
    otsu,
    pair_rule,
    params_for,
    suggest,
    threshold_for,
)


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def people(rng: np.random.Generator, sizes: list[int], d: int = 32, noise: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated synthetic people: random unit centres (in 32-d nearly orthogonal, scores ~0)
    and faces at `noise` around them (same-person scores ~0.98). Returns (vectors, person per face)."""
    centres = unit(rng.standard_normal((len(sizes), d)))
    truth = np.repeat(np.arange(len(sizes)), sizes)
    x = centres[truth] + noise * rng.standard_normal((len(truth), d)) / np.sqrt(d)
    return unit(x), truth


def same_partition(labels: np.ndarray, truth: np.ndarray) -> bool:
    """Whether two labellings group the same faces together (names aside; -1 counts as a group)."""
    pairs = {(int(a), int(b)) for a, b in zip(labels, truth)}
    return len(pairs) == len(set(labels.tolist())) == len(set(truth.tolist()))


def check_rules(labels: np.ndarray, photo_ids: np.ndarray) -> None:
    """The rules every labelling obeys: int64 (n,), groups 0..m-1 biggest first, no photo twice in one group."""
    assert labels.dtype == np.int64
    grouped = labels[labels >= 0]
    m = int(grouped.max()) + 1 if len(grouped) else 0
    sizes = np.bincount(grouped, minlength=m)
    assert (sizes >= 1).all(), "group numbers have gaps"
    assert (np.diff(sizes) <= 0).all(), f"groups are not numbered biggest first: {sizes}"
    for g in range(m):
        photos = photo_ids[labels == g]
        assert len(photos) == len(np.unique(photos)), f"group {g} holds two faces of one photo"


# -- the k-NN graph ----------------------------------------------------------------------------------


def test_knn_graph_matches_numpy_brute_force(rng):
    x = unit(rng.standard_normal((300, 16)))
    scores, ids = knn_graph(x, 7)
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    ref = np.argsort(-full, axis=1, kind="stable")[:, :7]
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_allclose(scores, np.take_along_axis(full, ref, 1), atol=1e-5)


def test_knn_graph_never_lists_a_face_as_its_own_neighbour_even_with_duplicates(rng):
    base = unit(rng.standard_normal((5, 8)))
    x = np.repeat(base, 4, axis=0)  # each vector four times: ties everywhere
    _, ids = knn_graph(x, 3)
    assert not (ids == np.arange(len(x))[:, None]).any()
    # Each face's three neighbours are its three twins.
    np.testing.assert_array_equal(np.sort(ids, axis=1) // 4, np.repeat(np.arange(5), 4)[:, None].repeat(3, 1))


def test_knn_graph_pads_when_fewer_faces_than_k():
    x = unit(np.eye(3, dtype=np.float32))
    scores, ids = knn_graph(x, 5)
    assert ids.shape == (3, 5)
    assert (ids[:, :2] >= 0).all() and (ids[:, 2:] == -1).all()
    assert np.isneginf(scores[:, 2:]).all()


def test_knn_graph_hnsw_path_finds_the_true_neighbours(monkeypatch, rng):
    """Above EXACT_MAX the graph comes from HNSW: on separated data its top neighbour is the exact one."""
    monkeypatch.setattr(clustering, "EXACT_MAX", 100)
    x, _ = people(rng, [4] * 100)
    _, ids = knn_graph(x, 3)
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    ref = np.argsort(-full, axis=1)[:, :3]
    # Exact search would give 1.0; HNSW (M=32, efSearch 48) on 400 points misses essentially nothing.
    recall = np.mean([len(set(a) & set(b)) / 3 for a, b in zip(ids.tolist(), ref.tolist())])
    assert recall >= 0.99


# -- average linkage on a hand-worked graph ------------------------------------------------------------


def test_agglomerate_on_a_hand_worked_graph():
    """Five faces in 2-d. Scores: s01 = 0.99, s12 = 0.95 (0 and 2 at cos 20 deg = 0.94), s34 = 0.98, s23 ~ 0.6.

    Worked by hand at threshold 0.9: round 1 merges the reciprocal best pairs {0,1} and {3,4};
    face 2's linkage to {0,1} is (0.95 + 0.94)/2 = 0.945 >= 0.9, so round 2 adds it; {0,1,2} to
    {3,4} averages ~0.5: no merge. At threshold 0.96, face 2 stays alone (0.945 < 0.96).
    """
    deg = np.radians([0.0, 8.1, 20.0, 70.0, 81.5])
    x = np.stack([np.cos(deg), np.sin(deg)], axis=1).astype(np.float32)
    a = np.array([0, 1, 1, 2, 3])
    b = np.array([1, 2, 0, 3, 4])
    blocked = np.zeros(5, bool)
    group = agglomerate(x.copy(), np.ones(5, np.int64), a, b, blocked, 0.9)
    np.testing.assert_array_equal(group, [0, 0, 0, 3, 3])
    group = agglomerate(x.copy(), np.ones(5, np.int64), a, b, blocked, 0.96)
    np.testing.assert_array_equal(group, [0, 0, 2, 3, 3])


def test_agglomerate_uses_every_pair_not_only_the_graph_edges():
    """Linkage is exact: 0-1 and 1-2 are edges at 0.9 each, but 0 and 2 (no edge) score ~0.62.

    Single linkage (and Chinese whispers) would chain all three; average linkage at 0.85 joins
    one pair, then the third face's mean to that pair is (0.9 + 0.62) / 2 = 0.76 < 0.85."""
    deg = np.radians([0.0, 25.84, 51.68])  # cos 25.84 = 0.9, cos 51.68 = 0.62
    x = np.stack([np.cos(deg), np.sin(deg)], axis=1).astype(np.float32)
    group = agglomerate(x.copy(), np.ones(3, np.int64), np.array([0, 1]), np.array([1, 2]), np.zeros(2, bool), 0.85)
    assert len(np.unique(group)) == 2
    assert group[0] != group[2]


def test_agglomerate_block_survives_merges():
    """0 and 2 are cannot-linked; 1 is close to both. 1 joins one of them, the other stays out."""
    x = unit(np.array([[1.0, 0.0], [1.0, 0.05], [1.0, 0.1]]))
    group = agglomerate(x.copy(), np.ones(3, np.int64), np.array([0, 1, 0]), np.array([1, 2, 2]),
                        np.array([False, False, True]), 0.5)
    assert group[0] != group[2]
    assert group[1] in (group[0], group[2])


def _at(degrees) -> np.ndarray:
    deg = np.radians(np.asarray(degrees, np.float64))
    return np.stack([np.cos(deg), np.sin(deg)], axis=1).astype(np.float32)


def test_agglomerate_single_face_rule_hand_worked():
    """threshold 0.9, single 0.96: two single faces need 0.96; a pair and a face need 0.9 + 0.06/2 = 0.93.

    Faces 0 and 1 at cos = 0.99 pair; face 2 scores 0.95 and 0.94 with them: alone it would not
    pair with either (< 0.96), but its mean 0.945 to the pair {0,1} passes 0.93. Face 3 scores
    0.95 with face 4 only: < 0.96, so both stay single. Hand-computed angles below."""
    ang0, ang1 = 0.0, np.degrees(np.arccos(0.99))
    # Face 2 at angle t with cos(t - ang0) + cos(t - ang1) = 1.89 (mean 0.945): solved numerically.
    ts = np.linspace(0, 30, 300001)
    t2 = ts[np.argmin(np.abs(np.cos(np.radians(ts)) + np.cos(np.radians(ts - ang1)) - 1.89))]
    x = _at([ang0, ang1, t2, 90.0, 90.0 + np.degrees(np.arccos(0.95))])
    a, b = np.array([0, 0, 1, 3]), np.array([1, 2, 2, 4])
    group = agglomerate(x.copy(), np.ones(5, np.int64), a, b, np.zeros(4, bool), 0.9, single=0.96)
    np.testing.assert_array_equal(group, [0, 0, 0, 3, 4])
    # Without the single-face rule everything that passes 0.9 merges.
    group = agglomerate(x.copy(), np.ones(5, np.int64), a, b, np.zeros(4, bool), 0.9)
    np.testing.assert_array_equal(group, [0, 0, 0, 3, 3])
    # The gap rule: faces 3 and 4 stand out from a background of 0.90 by 0.05 >= gap 0.04.
    background = np.array([np.inf, np.inf, np.inf, 0.90, 0.90])
    group = agglomerate(x.copy(), np.ones(5, np.int64), a, b, np.zeros(4, bool), 0.9, single=0.96, gap=0.04,
                        background=background)
    np.testing.assert_array_equal(group, [0, 0, 0, 3, 3])
    group = agglomerate(x.copy(), np.ones(5, np.int64), a, b, np.zeros(4, bool), 0.9, single=0.96, gap=0.06,
                        background=background)
    np.testing.assert_array_equal(group, [0, 0, 0, 3, 4])


def test_background_is_the_mean_of_ranks_2_to_10():
    scores = np.array([np.r_[0.99, np.arange(9) / 10.0, 0.0], np.r_[0.5, 0.4, np.full(9, -np.inf)]])
    np.testing.assert_allclose(background_of(scores), [0.4, 0.4])
    assert np.isinf(background_of(np.ones((2, 1)))).all()


def test_pair_rule_splits_faces_with_a_mate_from_faces_alone():
    """Half the faces' best score is ~0.97 (a mate), half ~0.92 (the nearest stranger): `single`
    falls between; never below the base threshold."""
    rng = np.random.default_rng(3)
    top = np.r_[0.97 + 0.003 * rng.standard_normal(500), 0.92 + 0.003 * rng.standard_normal(500)]
    rest = np.sort(0.85 + 0.01 * rng.standard_normal((1000, 9)), axis=1)[:, ::-1]
    scores = np.c_[top, rest]
    single, gap = pair_rule(scores, 0.9)
    assert 0.93 < single < 0.96
    assert 0.08 < gap < 0.11  # gaps ~0.12 (mates) and ~0.07 (strangers) around background ~0.85
    assert pair_rule(scores, 0.99)[0] == 0.99
    assert pair_rule(scores[:5], 0.9) == (0.9, float("inf"))


def test_params_for_fills_every_parameter(rng):
    x, _ = people(rng, [4] * 30, d=48, noise=0.4)
    p = params_for({"far_1e-3": 0.5}, x, k=7, min_faces=3)
    assert (p.threshold, p.k, p.min_faces) == (0.5, 7, 3)
    assert p.single is not None and p.single >= 0.5 and p.gap is not None and p.gap >= 0


def test_single_for_scales_the_single_face_rule_by_the_strangers_a_face_meets():
    """Hand-worked: threshold 0.9, single 0.96, far 1e-3: a face meets n * 1e-3 strangers above 0.9."""
    p = ClusterParams(0.9, single=0.96, far=1e-3)
    assert p.single_for(100) == pytest.approx(0.906)  # 0.9 + 0.06 * 0.1
    assert p.single_for(1000) == pytest.approx(0.96) and p.single_for(13_000) == pytest.approx(0.96)
    assert ClusterParams(0.9, single=0.96).single_for(10) == 0.96  # rate unknown: in full at any size
    assert ClusterParams(0.9, far=1e-3).single_for(10) is None
    assert params_for({"far_1e-3": 0.5}, unit(np.eye(12)[:11] + 0.1)).far == 1e-3
    assert params_for({"best_accuracy": 0.5}, unit(np.eye(12)[:11] + 0.1)).far is None
    with pytest.raises(ClusterInputError):
        ClusterParams(0.9, far=0.0)


def album(scores: list[float], faces: int, d: int = 128) -> np.ndarray:
    """People whose faces score exactly `scores[p]` with one another and exactly 0 with anyone else:
    face i of person p is sqrt(c) e_p + sqrt(1 - c) e_(P + i) for orthonormal e."""
    basis = np.eye(d, dtype=np.float64)
    rows = [np.sqrt(c) * basis[p] + np.sqrt(1 - c) * basis[len(scores) + p * faces + i]
            for p, c in enumerate(scores) for i in range(faces)]
    return np.asarray(rows, np.float32)


def test_a_small_album_groups_a_person_whose_photos_match_less_well():
    """24 photos, 4 people of 6: three match at 0.975, one at 0.94, above the card's 0.926 but below
    the collection's Otsu split of best scores (between 0.94 and 0.975). In full, that rule left the
    fourth person's six photos alone (checked below); a face among 24 meets 0.024 strangers above
    0.926, so the rule applies at 2.4% of its strength and the fourth person is grouped too."""
    x = album([0.975, 0.975, 0.975, 0.94], 6)
    truth = np.repeat(np.arange(4), 6)
    p = params_for({"far_1e-3": 0.926, "best_accuracy": 0.903}, x)
    assert p.far == 1e-3 and 0.94 < p.single < 0.975
    in_full = cluster(x, np.arange(24), ClusterParams(p.threshold, single=p.single, gap=p.gap))
    assert (in_full[truth == 3] == -1).all()  # the rule this replaces, in full
    labels = cluster(x, np.arange(24), p)
    check_rules(labels, np.arange(24))
    assert same_partition(labels, truth)
    # New photos follow the same size rule: a seventh photo of the fourth person joins its group.
    extra = album([0.975, 0.975, 0.975, 0.94], 7)[[27]]
    assert assign(extra, np.array([24]), x, np.arange(24), labels, p)[0] == labels[18]


# -- cluster: rules and known truth --------------------------------------------------------------------


def test_cluster_recovers_well_separated_people(rng):
    sizes = [9, 7, 7, 5, 3, 2, 1, 1, 1]
    x, truth = people(rng, sizes)
    labels = cluster(x, np.arange(len(x)), ClusterParams(threshold=0.8, k=10))
    check_rules(labels, np.arange(len(x)))
    expected = np.where(np.isin(truth, [6, 7, 8]), -1, truth)  # people of one photo stay unclustered
    assert same_partition(labels, expected)
    # Biggest first: the 9-face person is group 0, the 5-face person group 3.
    assert (labels[truth == 0] == 0).all() and (labels[truth == 3] == 3).all()
    assert (labels[np.isin(truth, [6, 7, 8])] == -1).all()


def test_two_faces_of_one_photo_are_never_in_one_group(rng):
    """Each photo holds two faces of one person (twins of one vector): they still split."""
    x, truth = people(rng, [6, 6, 4])
    photos = np.arange(len(x)) // 2  # faces 0,1 share photo 0, ...
    labels = cluster(x, photos, ClusterParams(threshold=0.8, k=10))
    check_rules(labels, photos)
    assert (labels >= 0).all()
    # Person 0 (6 faces, 3 photos) needs two groups at least; every group holds one face per photo.
    assert len(np.unique(labels[truth == 0])) >= 2


def test_a_face_that_matches_no_one_stays_alone(rng):
    x, _ = people(rng, [5, 1, 4])
    labels = cluster(x, np.arange(len(x)), ClusterParams(threshold=0.8, k=10))
    assert labels[5] == -1
    assert (np.bincount(labels[labels >= 0]) == [5, 4]).all()


def test_min_faces_leaves_small_groups_unclustered(rng):
    x, truth = people(rng, [5, 2])
    labels = cluster(x, np.arange(len(x)), ClusterParams(threshold=0.8, k=10, min_faces=3))
    assert (labels[truth == 0] == 0).all() and (labels[truth == 1] == -1).all()


def test_cluster_is_deterministic_and_independent_of_input_order(rng):
    x, truth = people(rng, [8, 6, 6, 3, 2, 1], noise=0.6)  # noisy: some borderline merges
    photos = np.arange(len(x))
    p = ClusterParams(threshold=0.85, k=8)
    first = cluster(x, photos, p, seed=3)
    np.testing.assert_array_equal(first, cluster(x, photos, p, seed=3))
    perm = np.random.default_rng(7).permutation(len(x))
    again = cluster(x[perm], photos[perm], p)
    assert same_partition(again, first[perm])


def test_cluster_rejects_bad_input(rng):
    x, _ = people(rng, [3, 3])
    with pytest.raises(ClusterInputError, match="L2-normalised"):
        cluster(x * 2, np.arange(6), ClusterParams(0.8))
    with pytest.raises(ClusterInputError, match="photo_ids"):
        cluster(x, np.arange(5), ClusterParams(0.8))
    with pytest.raises(FaceSearchError, match="threshold"):
        ClusterParams(threshold=float("nan"))
    with pytest.raises(ClusterInputError, match="pinned to one label"):
        cluster(x, np.array([0, 0, 1, 2, 3, 4]), ClusterParams(0.8), fixed=np.array([5, 5, -1, -1, -1, -1]))


def test_empty_and_single_face():
    p = ClusterParams(0.8)
    assert cluster(np.empty((0, 4), np.float32), np.empty(0, np.int64), p).shape == (0,)
    np.testing.assert_array_equal(cluster(unit(np.ones((1, 4))), np.zeros(1, np.int64), p), [-1])


# -- pinned labels -------------------------------------------------------------------------------------


def test_pinned_faces_stay_together_apart_from_other_pins_and_seed_their_group(rng):
    x, truth = people(rng, [6, 4, 1])
    photos = np.arange(len(x))
    fixed = np.full(len(x), -1, np.int64)
    fixed[[0, 1]] = 40  # two faces of person 0 pinned as one group
    fixed[2] = 41  # a third face of person 0 pinned to another group: they must not meet
    fixed[10] = 42  # the one-photo person pinned alone: kept as a group of one
    labels = cluster(x, photos, ClusterParams(threshold=0.8, k=10), fixed=fixed)
    check_rules(labels, photos)
    assert labels[0] == labels[1] >= 0
    assert labels[2] >= 0 and labels[2] != labels[0]
    assert labels[10] >= 0 and (labels == labels[10]).sum() == 1
    # The unpinned faces of person 0 join one of the two pinned groups; person 1 is one group.
    assert set(labels[3:6].tolist()) <= {labels[0], labels[2]}
    assert len(np.unique(labels[truth == 1])) == 1 and labels[6] not in (labels[0], labels[2])


def test_apart_keeps_a_moved_face_out(rng):
    x, truth = people(rng, [5])
    apart = np.array([[4, 0], [4, 1], [4, 2], [4, 3]])
    labels = cluster(x, np.arange(5), ClusterParams(threshold=0.8, k=10), apart=apart)
    assert (labels[:4] == 0).all() and labels[4] == -1


# -- assign (incremental) ------------------------------------------------------------------------------


def test_assign_agrees_with_cluster_on_well_separated_people(rng):
    x, truth = people(rng, [10, 8, 6, 5, 4, 1, 1], d=48)
    photos = np.arange(len(x))
    p = ClusterParams(threshold=0.8, k=10)
    hold = np.zeros(len(x), bool)
    hold[[0, 1, 10, 18, 24, 33, 34]] = True  # new faces: of people 0, 1, 2, 3 and the two one-photo people
    old = cluster(x[~hold], photos[~hold], p)
    new = assign(x[hold], photos[hold], x[~hold], photos[~hold], old, p)
    combined = np.empty(len(x), np.int64)
    combined[~hold], combined[hold] = old, new
    full = cluster(x, photos, p)
    assert same_partition(combined, full)
    assert new[5] == new[6] == -1  # the two one-photo people stay unclustered


def test_assign_starts_new_groups_above_the_existing_labels(rng):
    x, truth = people(rng, [5, 4, 3, 2], d=48)
    photos = np.arange(len(x))
    p = ClusterParams(threshold=0.8, k=10)
    old_rows = truth <= 1
    old = cluster(x[old_rows], photos[old_rows], p)
    new = assign(x[~old_rows], photos[~old_rows], x[old_rows], photos[old_rows], old, p)
    assert old.max() == 1
    np.testing.assert_array_equal(new, [2, 2, 2, 3, 3])  # the 3-face person first (biggest first)


def test_assign_keeps_a_photo_out_of_a_group_that_already_holds_it(rng):
    x, truth = people(rng, [5], d=48)
    photos = np.array([0, 1, 2, 3, 4])
    old = cluster(x[:4], photos[:4], ClusterParams(0.8, k=10))
    assert (old == 0).all()
    # The new face is of photo 2, whose face is in group 0 already.
    new = assign(x[4:], np.array([2]), x[:4], photos[:4], old, ClusterParams(0.8, k=10))
    np.testing.assert_array_equal(new, [-1])


def test_assign_never_merges_existing_groups(rng):
    """A new face halfway between two groups joins at most one; the groups stay apart."""
    x = unit(np.array([[1, 0, 0], [1, 0.05, 0], [0, 1, 0], [0.05, 1, 0]], np.float32))
    old = np.array([0, 0, 1, 1])
    mid = unit(np.array([[1, 1, 0]], np.float32))
    new = assign(mid, np.array([9]), x, np.arange(4), old, ClusterParams(0.5, k=4))
    assert new[0] in (0, 1)


# -- suggestions ---------------------------------------------------------------------------------------


def test_suggest_offers_the_named_identity_with_its_mean_score(rng):
    x, truth = people(rng, [6, 5, 4], d=48)
    labels = truth.copy()  # groups 0, 1, 2
    # Named faces of person 1: close to group 1's faces.
    named = unit(x[truth == 1][:3] + 0.01)
    out = suggest(x, labels, named, ["Ada"] * 3, threshold=0.8)
    assert [s.group for s in out] == [1] and out[0].identity == "Ada"
    ref = float((x[truth == 1] @ named.T).mean())
    assert out[0].score == pytest.approx(ref, abs=1e-5)
    assert out[0].to_dict() == {"group": 1, "identity": "Ada", "score": round(ref, 4)}
    assert suggest(x, labels, named, ["Ada"] * 3, threshold=0.999) == []
    assert suggest(x, labels, np.empty((0, 48), np.float32), [], threshold=0.5) == []


# -- the threshold -------------------------------------------------------------------------------------


def test_threshold_from_the_model_card():
    assert threshold_for({"best_accuracy": 0.903, "far_1e-3": 0.9262}) == pytest.approx(0.9262)
    assert threshold_for({"best_accuracy": 0.41}) == pytest.approx(0.41)
    with pytest.raises(ClusterInputError, match="not a score"):
        threshold_for({"far_1e-3": 7.0})


def test_threshold_from_the_score_distribution(rng):
    """No calibration: Otsu's split of the neighbour scores falls between same- and different-person scores."""
    x, truth = people(rng, [4] * 60, d=48, noise=0.4)
    t = threshold_for({}, x)
    full = x @ x.T
    same = full[(truth[:, None] == truth[None, :]) & ~np.eye(len(x), dtype=bool)]
    diff = full[truth[:, None] != truth[None, :]]
    assert np.quantile(diff, 0.9999) < t < np.quantile(same, 0.01)
    with pytest.raises(ClusterInputError, match="no pair calibration"):
        threshold_for(None, x[:5])


def test_otsu_on_a_hand_worked_histogram():
    # Two clumps at 0.1 and 0.9: any split between them maximises the between-class variance, and
    # the middle of those splits is 0.5 (bins of 0.1: edges 0.2 .. 0.8, middle 0.5).
    t = otsu(np.r_[np.full(50, 0.1), np.full(50, 0.9)], bins=8)
    assert t == pytest.approx(0.5)
    assert otsu(np.full(5, 0.3)) == pytest.approx(0.3)
