"""Pair-verification metrics against hand-worked tables and brute-force references."""

import numpy as np
import pytest

from embedder.errors import DatasetError
from train.metrics import best_threshold_accuracy, make_pairs, pair_scores


def test_pair_scores_are_cosines():
    a = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]])
    b = np.array([[6.0, 8.0], [0.0, 2.0], [1.0, 1.0]])
    np.testing.assert_allclose(pair_scores(a, b), [1.0, 0.0, 0.0])
    np.testing.assert_allclose(pair_scores(a[:1], -b[:1]), [-1.0])


def test_pair_scores_check_shapes():
    with pytest.raises(ValueError, match="same shape"):
        pair_scores(np.ones((3, 4)), np.ones((3, 5)))


def test_best_threshold_hand_worked_table_with_ties():
    # score >= t predicts same. Unique scores 0.1 0.3 0.6 0.8 0.9; correct pairs per threshold:
    #   t=-0.4 (all same): 4 | t=0.2: 4 TP + 1 TN = 5 | t=0.45: 3 TP + 2 TN = 5
    #   t=0.7: 2 + 2 = 4 | t=0.85: 1 + 3 = 4 | t=1.4 (none same): 3
    # The first (lowest) of the equally good thresholds wins: 0.2, the midpoint of 0.1 and 0.3.
    scores = np.array([0.9, 0.8, 0.8, 0.6, 0.3, 0.3, 0.1])
    same = np.array([1, 1, 0, 1, 0, 1, 0], bool)
    accuracy, threshold = best_threshold_accuracy(scores, same)
    assert accuracy == pytest.approx(5 / 7)
    assert threshold == pytest.approx(0.2)


def test_ties_are_never_split():
    # Splitting the tie would claim 100%; one threshold can only put all four on one side.
    assert best_threshold_accuracy([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0])[0] == 0.5
    assert best_threshold_accuracy([0.5, 0.5], [True, True]) == (1.0, 0.0)
    assert best_threshold_accuracy([0.5, 0.5], [False, False]) == (1.0, 1.0)


def test_separable_scores_give_the_midpoint_of_the_gap():
    assert best_threshold_accuracy([0.9, 0.1, 0.7, 0.2], [1, 0, 1, 0]) == (1.0, pytest.approx(0.45))


def test_best_threshold_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        scores = np.round(rng.normal(size=50), 1)  # rounding makes many ties
        same = rng.random(50) < 0.5
        accuracy, threshold = best_threshold_accuracy(scores, same)
        assert np.mean((scores >= threshold) == same) == pytest.approx(accuracy)
        candidates = np.concatenate([np.unique(scores), [np.inf]])
        assert accuracy == pytest.approx(max(np.mean((scores >= t) == same) for t in candidates))


def test_best_threshold_checks_input():
    with pytest.raises(ValueError):
        best_threshold_accuracy([], [])
    with pytest.raises(ValueError):
        best_threshold_accuracy([0.1, 0.2], [True])


def test_make_pairs_balanced_distinct_and_seeded():
    labels = np.repeat(np.arange(10), 5)
    pairs, same = make_pairs(labels, 200, seed=3)
    assert pairs.shape == (200, 2) and same.sum() == 100
    assert np.all(pairs[:, 0] < pairs[:, 1])
    np.testing.assert_array_equal(labels[pairs[:, 0]] == labels[pairs[:, 1]], same)
    assert len({tuple(p) for p in pairs}) == 200
    again, same_again = make_pairs(labels, 200, seed=3)
    np.testing.assert_array_equal(pairs, again)
    np.testing.assert_array_equal(same, same_again)
    assert not np.array_equal(make_pairs(labels, 200, seed=4)[0], pairs)


def test_make_pairs_stops_at_the_distinct_positives():
    labels = np.array([0, 0, 0, 1, 1, 2])  # 3 + 1 = 4 positive pairs exist
    pairs, same = make_pairs(labels, 100, seed=0)
    assert same.sum() == 4 and (~same).sum() == 4
    assert {tuple(p) for p in pairs[same]} == {(0, 1), (0, 2), (1, 2), (3, 4)}


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [1, 1, 1]])
def test_make_pairs_needs_both_kinds(labels):
    with pytest.raises(DatasetError, match="cannot make verification pairs"):
        make_pairs(np.array(labels), 10, seed=0)
