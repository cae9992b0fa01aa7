"""Pair-verification metrics against hand-worked tables and brute-force references."""

import numpy as np
import pytest

from facesearch.embedder.core.errors import DatasetError
from facesearch.embedder.evaluation.metrics import (
    best_threshold_accuracy,
    make_pairs,
    pair_scores,
    roc_auc,
    roc_curve,
    stratified_folds,
    tar_at_far,
    threshold_at_far,
    verify_pairs,
)


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


# --- ROC, AUC, TAR at FAR, k-fold verification ----------------------------------------------------

# The hand-worked table above: P = 4 positives, N = 3 negatives, ties at 0.8 (one of each) and 0.3.
TABLE_SCORES = np.array([0.9, 0.8, 0.8, 0.6, 0.3, 0.3, 0.1])
TABLE_SAME = np.array([1, 1, 0, 1, 0, 1, 0], bool)


def test_roc_curve_hand_worked_table_with_ties():
    # Accept score >= cut. Cut 0.9: 1 TP 0 FP | 0.8: 2 TP 1 FP (the tie moves both) | 0.6: 3 TP 1 FP
    # | 0.3: 4 TP 2 FP | 0.1: 4 TP 3 FP.
    far, tar, cuts = roc_curve(TABLE_SCORES, TABLE_SAME)
    np.testing.assert_allclose(far, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tar, [0, 0.25, 0.5, 0.75, 1, 1])
    np.testing.assert_allclose(cuts, [np.inf, 0.9, 0.8, 0.6, 0.3, 0.1])


def test_auc_hand_worked_and_equal_to_the_pairwise_probability():
    # Trapezoids: 1/3 * (0.25 + 0.5) / 2 + 1/3 * (0.75 + 1) / 2 + 1/3 * 1 = 0.75. Pairwise: of the
    # 12 (positive, negative) pairs the positive wins 3 + 2.5 + 2 + 1.5 = 9 (ties count half).
    assert roc_auc(TABLE_SCORES, TABLE_SAME) == pytest.approx(0.75)
    rng = np.random.default_rng(1)
    for _ in range(10):
        scores, same = np.round(rng.normal(size=60), 1), rng.random(60) < 0.4
        pos, neg = scores[same][:, None], scores[~same][None, :]
        want = np.mean((pos > neg) + 0.5 * (pos == neg))
        assert roc_auc(scores, same) == pytest.approx(want)


@pytest.mark.parametrize("far_target, threshold, tar, far", [
    (0.0, 0.85, 0.25, 0.0),  # no negative may pass: reject 0.8, accept from the next score up (0.9)
    (1 / 3, 0.45, 0.75, 1 / 3),  # one may pass (0.8): reject the second highest negative, 0.3
    (0.5, 0.45, 0.75, 1 / 3),  # floor(0.5 * 3) = 1, as above
    (1.0, -0.4, 1.0, 1.0),  # every negative may pass: accept everything
])
def test_tar_at_far_hand_worked_table(far_target, threshold, tar, far):
    point = tar_at_far(TABLE_SCORES, TABLE_SAME, far_target)
    assert (point.threshold, point.tar, point.far) == pytest.approx((threshold, tar, far))


def test_tar_at_far_never_splits_tied_negatives():
    # One negative in three may pass, but the two highest are tied: both are rejected.
    point = tar_at_far([0.9, 0.5, 0.5, 0.1], [True, False, False, False], 0.34)
    assert (point.threshold, point.tar, point.far) == pytest.approx((0.7, 1.0, 0.0))
    # 1e-3 of 3000 negatives must allow exactly 3 (floating point gives 3.0000000000000004 or less).
    neg = np.linspace(0, 1, 3000)
    assert np.sum(neg >= threshold_at_far(neg, 1e-3)) == 3


def test_tar_at_far_matches_brute_force():
    rng = np.random.default_rng(2)
    for far_target in (1e-3, 1e-2, 0.1, 0.3):
        scores, same = np.round(rng.normal(size=400), 2), rng.random(400) < 0.5
        scores[same] += 1.0
        point = tar_at_far(scores, same, far_target)
        assert point.far <= far_target and point.far == pytest.approx(np.mean(scores[~same] >= point.threshold))
        best = max(np.mean(scores[same] >= t) for t in np.r_[np.unique(scores), np.inf]
                   if np.mean(scores[~same] >= t) <= far_target)
        assert point.tar == pytest.approx(best)


def test_roc_needs_both_kinds():
    with pytest.raises(ValueError, match="positive and negative"):
        roc_curve([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="finite"):
        roc_curve([0.1, np.nan], [True, False])


def test_k_fold_hand_worked_table_with_a_fold_without_positives():
    # fold 0: positives 0.9 0.8, negatives 0.4 0.2 | fold 1: positive 0.6, negatives 0.8 0.5
    # | fold 2: negatives 0.7 0.1 (no positive).
    # Test fold 0: folds 1+2 are best with no pair "same" (4/5 right, threshold 0.8 + 0.5 = 1.3): 2/4.
    # Test fold 1: folds 0+2 separate at 0.75 (6/6): on fold 1 only the 0.5 negative is right, 1/3.
    # Test fold 2: folds 0+1 are best at 0.55 (6/7): on fold 2, 0.7 is a false accept, 1/2.
    scores = np.array([0.9, 0.8, 0.4, 0.2, 0.6, 0.8, 0.5, 0.7, 0.1])
    same = np.array([1, 1, 0, 0, 1, 0, 0, 0, 0], bool)
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    report = verify_pairs(scores, same, folds, far_targets=(0.2,))
    np.testing.assert_allclose(report.fold_accuracies, [1 / 2, 1 / 3, 1 / 2])
    np.testing.assert_allclose(report.fold_thresholds, [1.3, 0.75, 0.55])
    assert report.accuracy == pytest.approx(4 / 9)
    assert report.accuracy_std == pytest.approx(np.sqrt(1 / 162))  # population std (ddof=0)
    assert (report.folds, report.pairs, report.positives, report.negatives) == (3, 9, 3, 6)
    assert (report.best_accuracy, report.threshold) == best_threshold_accuracy(scores, same)
    assert report.auc == pytest.approx(roc_auc(scores, same))
    assert report.at_far(0.2) == tar_at_far(scores, same, 0.2)
    d = report.to_dict()
    assert d["accuracy"] == report.accuracy and d["tar_at_far"][0]["far_target"] == 0.2 and "roc" not in d


def test_k_fold_matches_a_direct_reference():
    rng = np.random.default_rng(3)
    scores, same = rng.normal(size=300), rng.random(300) < 0.5
    scores[same] += 1.5
    folds = rng.integers(0, 10, 300)
    report = verify_pairs(scores, same, folds)
    want = []
    for k in range(10):
        _, t = best_threshold_accuracy(scores[folds != k], same[folds != k])
        want.append(np.mean((scores[folds == k] >= t) == same[folds == k]))
    np.testing.assert_allclose(report.fold_accuracies, want)
    assert report.accuracy == pytest.approx(np.mean(want)) and report.accuracy_std == pytest.approx(np.std(want))


def test_one_fold_falls_back_to_the_best_threshold():
    report = verify_pairs([0.9, 0.1], [True, False], folds=10)  # one pair of each kind: one fold
    assert (report.folds, report.accuracy, report.accuracy_std, report.fold_accuracies) == (1, 1.0, 0.0, ())


def test_stratified_folds_give_lfw_fold_boundaries():
    # pairs.txt layout: per fold, 300 positives then 300 negatives.
    same = np.tile(np.r_[np.ones(300, bool), np.zeros(300, bool)], 10)
    np.testing.assert_array_equal(stratified_folds(same, 10), np.arange(6000) // 600)
    # pairsDevTest.txt layout: all positives, then all negatives: every fold still gets both kinds.
    dev = np.r_[np.ones(500, bool), np.zeros(500, bool)]
    folds = stratified_folds(dev, 10)
    assert all((dev[folds == k].sum(), (~dev[folds == k]).sum()) == (50, 50) for k in range(10))
    np.testing.assert_array_equal(stratified_folds([True, True, True, False], 2), [0, 0, 1, 0])


def test_verify_pairs_checks_fold_ids():
    with pytest.raises(ValueError, match="one fold id per pair"):
        verify_pairs([0.9, 0.1], [True, False], np.array([0, 1, 2]))
