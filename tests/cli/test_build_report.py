"""The build report's tuning lines (`facesearch.cli.output.format_build_report`), text and JSON."""

from __future__ import annotations

import json

from facesearch.cli.output import format_build_report
from facesearch.index.sync.build import BuildReport

MISSED = {"segment": 4, "faces": 1_000_000, "factory": "HNSW32,Flat", "parameter": "ef_search", "value": 4096,
          "rerank": 1, "objective": "decisions", "target_met": False, "agreement": 0.9962, "target_agreement": 0.999,
          "strict_agreement": 0.91, "floor": 0.4312, "floor_source": "strangers", "floor_recall": 0.9991,
          "target_recall": 0.99, "recall": 0.967, "recall_k": 10, "recall_at_1": 1.0, "tune_sample": 1000,
          "note": "identity agreement 0.9962 < 0.999 at efSearch 4096, the largest tried: kept it"}
OLD = MISSED | {"segment": 2, "objective": "recall", "target_met": True, "agreement": None, "floor": None,
                "floor_recall": None, "floor_source": None, "recall": 0.992, "value": 576, "note": None}


def report(tuning: list[dict]) -> dict:
    return BuildReport("/photos", "/index", vectors=1_000_000, identities=250_000, tuning=tuning).to_dict() | {
        "model": "dlib-resnet"}


def test_a_missed_target_says_why_and_what_was_kept():
    text = format_build_report(report([MISSED]))
    (line,) = [line for line in text.splitlines() if line.startswith("segment 4")]
    assert line == ("segment 4 (1000000 faces): HNSW32,Flat, efSearch 4096: identity agreement 0.9962 (target "
                    "0.999), floor recall 0.9991 (target 0.99) above 0.431 (an estimated stranger threshold - margin) "
                    "on 1000 held-out faces; recall@10 0.967, recall@1 1.000; target missed: identity agreement "
                    "0.9962 < 0.999 at efSearch 4096, the largest tried: kept it")
    assert json.loads(json.dumps(report([MISSED])))["tuning"] == [MISSED]  # --json carries the same record


def test_a_segment_tuned_for_recall_before_objectives_reads_as_such():
    text = format_build_report(report([OLD]))
    assert "segment 2 (1000000 faces): HNSW32,Flat, efSearch 576: tuned for recall@10 0.992, recall@1 1.000 " \
           "(target 0.99) on 1000 held-out faces" in text
    assert "segment" not in format_build_report(report([]))
