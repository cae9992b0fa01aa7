"""The short kill -9 run of benchmarks/crash.py: the audit after every restart finds nothing lost, back or half-written.

`facesearch serve --workers 2` (every process of it killed at once) under enrolments, removals and
queries from 3 clients, killed 4 times at seeded random moments; the full run (20+ kills) is
`python benchmarks/crash.py`. Asserts the audit, not timings.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
LFW = Path(os.environ.get("FACESEARCH_LFW", Path(__file__).resolve().parents[3] / "shared" / "lfw"))


@pytest.mark.skipif(not (LFW / "images_deepfunneled").is_dir(), reason=f"LFW not found at {LFW} (set FACESEARCH_LFW)")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kills a process group with SIGKILL")
def test_acknowledged_writes_survive_kill_9_of_every_server_process(tmp_path, default_model):
    sys.path.insert(0, str(BENCHMARKS))
    from crash import run_crash

    result = run_crash(tmp_path, kills=4, seed=7, workers=2, clients=3, min_delay=0.5, max_delay=2.5, people=20,
                       lfw=LFW, model=default_model, log=lambda line: print(line))
    print(result)
    assert result["failed_audits"] == 0, result["failures"]
    assert (result["lost"], result["resurrected"], result["half"]) == (0, 0, 0)
    assert result["errors"] == [], "a write got an error other than a deliberate 503"
    assert result["audits"] == 5
    assert result["enrolments_acked"] > 0 and result["removals_acked"] > 0, "the traffic wrote nothing to audit"


@pytest.mark.skipif(not (LFW / "images_deepfunneled").is_dir(), reason=f"LFW not found at {LFW} (set FACESEARCH_LFW)")
def test_a_short_locust_run_with_a_compaction_in_the_middle_loses_no_acknowledged_write(tmp_path, default_model):
    """benchmarks/load.py in small: Locust (headless) against serve --workers 2 on 3,000 synthetic faces,
    90/8/2 query/enrol/remove, `facesearch compact --index-type hnsw` forced at half time."""
    # Only looked up, never imported: importing locust monkey-patches the process with gevent (asyncio breaks).
    if importlib.util.find_spec("locust") is None:
        pytest.skip("the load run drives Locust: pip install -e '.[dev]'")
    sys.path.insert(0, str(BENCHMARKS))
    from load import run_load

    result = run_load(tmp_path, faces=3000, duration=15, users=4, workers=2, index_type="hnsw", people=20, lfw=LFW,
                      model_dir=default_model)
    print({k: result[k] for k in ("compaction", "requests_per_s", "ledger", "audit")})
    assert not result["audit_failed"], result["audit"]
    assert result["compaction"]["exit"] == 0, result["compaction"]
    assert result["compaction"]["output"]["written"]
    assert result["ledger"]["enrolments_acked"] > 0, "the run enrolled nothing to audit"
    for name, endpoint in result["endpoints"].items():
        assert endpoint["errors_5xx_other"] == 0 and endpoint["no_answer"] == 0, (name, endpoint)
