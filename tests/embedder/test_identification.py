"""Identification metrics against a hand-worked table."""

import numpy as np
import pytest

from facesearch.embedder.evaluation.identification import identification_report, true_match_ranks

GALLERY = {"A", "B", "C"}
# probe identity, ranked gallery identities, their scores
TABLE = [
    ("A", ["A", "B"], [0.9, 0.5]),  # rank 1
    ("B", ["A", "B"], [0.7, 0.6]),  # rank 2
    ("C", ["C", "A"], [0.4, 0.4]),  # tied with a wrong identity: rank 2, not 1
    ("A", ["B", "C"], [0.8, 0.3]),  # not listed: no rank
    ("B", ["B", "A"], [0.5, 0.2]),  # rank 1, with a low score
    ("X", ["A", "B"], [0.65, 0.2]),  # impostor (no gallery folder)
    ("Y", ["C", "B"], [0.3, 0.1]),  # impostor
]


def _columns():
    return [row[0] for row in TABLE], [row[1] for row in TABLE], [row[2] for row in TABLE]


def test_true_match_ranks_hand_worked_with_ties():
    np.testing.assert_array_equal(true_match_ranks(*_columns()), [1, 2, 2, 0, 1, 0, 0])


def test_identification_report_hand_worked():
    # Known probes: 5; rank-1 right: probes 1 and 5 -> 2/5; within rank 5: all but probe 4 -> 4/5.
    # Impostors' best scores 0.65, 0.3.
    # FAR 0: reject 0.65; the next higher best score is 0.7 -> threshold 0.675; DIR: probe 1 only.
    # FAR 0.5: one impostor may pass; reject 0.3, next higher best score 0.4 -> threshold 0.35;
    #   DIR: probes 1 (0.9) and 5 (0.5) -> 2/5, FAR 1/2.
    # Given threshold 0.45: DIR 2/5 (0.9, 0.5), FAR 1/2 (0.65).
    report = identification_report(*_columns(), GALLERY, ranks=(1, 2, 5), far_targets=(0.0, 0.5),
                                   thresholds=(0.45,))
    assert (report.known_probes, report.unknown_probes) == (5, 2)
    assert report.rank_rates == pytest.approx({1: 2 / 5, 2: 4 / 5, 5: 4 / 5})
    assert [p.far_target for p in report.open_set] == [0.0, 0.5, None]
    got = [(p.threshold, p.dir, p.far) for p in report.open_set]
    want = [(0.675, 1 / 5, 0.0), (0.35, 2 / 5, 0.5), (0.45, 2 / 5, 0.5)]
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w)
    d = report.to_dict()
    assert d["rank_rates"]["1"] == pytest.approx(0.4) and d["open_set"][2]["far_target"] is None


def test_without_impostors_there_is_no_open_set_point():
    report = identification_report(*(column[:5] for column in _columns()), GALLERY)
    assert report.unknown_probes == 0 and report.open_set == ()
    assert report.rank_rates[1] == pytest.approx(2 / 5)


def test_identification_checks_input():
    with pytest.raises(ValueError, match="one ranked list per probe"):
        true_match_ranks(["A"], [], [])
    with pytest.raises(ValueError, match="2 identities but 1 scores"):
        true_match_ranks(["A"], [["A", "B"]], [[0.5]])
    with pytest.raises(ValueError, match="none of the 1 probes"):
        identification_report(["X"], [["A"]], [[0.5]], GALLERY)
