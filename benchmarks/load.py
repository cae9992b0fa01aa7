"""A load run with Locust (headless) against `facesearch serve --workers 2`, a compaction forced in the middle.

    python benchmarks/load.py [--faces 1000000] [--duration 600] [--users 8] [--workers 2]
                              [--index-type hnsw] [--compact-at 0.5] [--workdir W] [--lfw DIR]

A synthetic index of `--faces` faces (benchmarks/serve.py's `build_synthetic`: random unit vectors of
the default model's size, 5 per identity, flat, calibrated; kept in the work folder and copied for
each run) is served by `facesearch serve --workers N`; Locust's users (benchmarks/locustfile.py)
send 90% queries, 8% enrolments and 2% removals with real LFW photos for `--duration` seconds. At
`--compact-at` of the run, `facesearch compact --index-type TYPE` rewrites every segment beside the
server. Reported: throughput and p50/p95/p99 per endpoint, over the whole run, during the compaction
and outside it; errors (503s apart from other failures); the compaction's duration. Then the audit
of benchmarks/traffic.py: every acknowledged enrolment found by its face ids, every acknowledged
removal gone. Prints JSON; exits 1 when the audit finds a problem.

Needs the default model, the [serve] extra, Locust (the [dev] extra) and LFW.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from traffic import DEFAULT_LFW, FACESEARCH, Enrolment, Ledger, ServeProcess, audit, audit_failed  # noqa: E402

LOCUST = shutil.which("locust", path=os.path.dirname(sys.executable)) or "locust"
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


def synthetic_index(workdir: Path, faces: int, model_dir: Path | None = None) -> Path:
    """A copy of the cached synthetic index of `faces` faces (built once per work folder)."""
    from serve import build_synthetic

    base = workdir / f"synthetic-{faces}"
    if not (base / "manifest.json").is_file():
        shutil.rmtree(base, ignore_errors=True)
        print(f"building a synthetic index of {faces} faces: {build_synthetic(base, faces, model_dir=model_dir)}", file=sys.stderr)
    run = workdir / "run-index"
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(base, run, ignore=shutil.ignore_patterns(".lock", ".merge.lock"))
    return run


def percentiles(ms: list[float]) -> dict:
    if not ms:
        return {"n": 0}
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"n": len(ms), "p50_ms": round(float(p50), 1), "p95_ms": round(float(p95), 1),
            "p99_ms": round(float(p99), 1), "max_ms": round(float(max(ms)), 1)}


def report(requests: list, window: tuple[float, float] | None, seconds: float) -> dict:
    """Per endpoint: requests/s, errors, percentiles over the run, inside `window` (the compaction) and outside."""
    out = {}
    for name in sorted({r[1] for r in requests}):
        rows = [r for r in requests if r[1] == name]
        ok = [r for r in rows if 200 <= r[3] < 300]
        entry = {"requests": len(rows), "per_s": round(len(rows) / seconds, 2),
                 "errors_503": sum(r[3] == 503 for r in rows),
                 "errors_5xx_other": sum(r[3] >= 500 and r[3] != 503 for r in rows),
                 "errors_4xx": sum(400 <= r[3] < 500 for r in rows), "no_answer": sum(r[3] == 0 for r in rows),
                 "all": percentiles([r[2] for r in ok])}
        if window is not None:
            # a request overlaps the compaction if it ended after it started and began before it ended
            inside = [r for r in rows if r[0] >= window[0] and r[0] - r[2] / 1000 <= window[1]]
            outside = [r for r in rows if r not in inside]
            entry["during_compaction"] = percentiles([r[2] for r in inside if 200 <= r[3] < 300]) | {
                "failed": sum(not 200 <= r[3] < 300 for r in inside)}
            entry["outside_compaction"] = percentiles([r[2] for r in outside if 200 <= r[3] < 300])
        out[name] = entry
    return out


def read_ledger(out: Path) -> Ledger:
    ledger = Ledger()
    for f in out.glob("ledger-*.json"):
        for identity, e in json.loads(f.read_text()).items():
            state = "uncertain" if e["state"] == "sent" else e["state"]  # sent at the very end: no answer counted
            removal = "uncertain" if e["removal"] == "sent" else e["removal"]
            ledger.enrolments[identity] = Enrolment(identity, e["photos"], state, e["face_ids"], removal)
    return ledger


def run_load(workdir: Path, *, faces: int, duration: float, users: int = 8, workers: int = 2,
             index_type: str | None = "hnsw", compact_at: float = 0.5, people: int = 50, lfw: Path = DEFAULT_LFW,
             threads: int = 1, compact_nice: int = 0, model_dir: Path | None = None) -> dict:
    """One load run; the report and the audit (`model_dir`: the default model's folder, if not the installed one)."""
    index = synthetic_index(workdir, faces, model_dir)
    out = workdir / "locust"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    server = ServeProcess(index, None, workdir / "serve.log", "--workers", str(workers), "--threads", str(threads),
                          "--log-level", "warning")
    window, compaction = None, None
    try:
        env = os.environ | {"FACESEARCH_LOAD_LFW": str(lfw), "FACESEARCH_LOAD_PEOPLE": str(people),
                            "FACESEARCH_LOAD_OUT": str(out)}
        started = time.time()
        locust = subprocess.Popen([LOCUST, "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r", str(users),
                                   "--run-time", f"{int(duration)}s", "--host", server.url, "--only-summary",
                                   "--stop-timeout", "30", "--loglevel", "WARNING"], env=env,
                                  stdout=open(workdir / "locust.log", "wb"), stderr=subprocess.STDOUT)
        if index_type is not None:
            time.sleep(max(0.0, started + compact_at * duration - time.time()))
            t0 = time.time()
            command = [FACESEARCH, "compact", "--index", str(index), "--index-type", index_type, "--json"]
            if compact_nice:  # the compaction at a lower CPU priority than the server (`nice facesearch compact`)
                command = ["nice", "-n", str(compact_nice), *command]
            done = subprocess.run(command, capture_output=True, text=True, env=os.environ)
            window = (t0, time.time())
            compaction = {"seconds": round(window[1] - window[0], 2), "exit": done.returncode,
                          "output": (json.loads(done.stdout) if done.returncode == 0 else done.stderr[-2000:])}
        locust.wait(duration + 180)
        seconds = time.time() - started
        requests = [r for f in out.glob("requests-*.json") for r in json.loads(f.read_text())]
        ledger = read_ledger(out)
        found = audit(server.url, index, ledger)
    finally:
        server.stop()
    return {"faces": faces, "duration_s": duration, "users": users, "workers": workers, "compact_nice": compact_nice,
            "compaction": compaction,
            "requests_per_s": round(len(requests) / seconds, 2), "endpoints": report(requests, window, seconds),
            "ledger": ledger.counts(), "audit": found, "audit_failed": audit_failed(found)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faces", type=int, default=1_000_000)
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--index-type", default="hnsw", help="the forced compaction's type ('none': no compaction)")
    parser.add_argument("--compact-at", type=float, default=0.5)
    parser.add_argument("--compact-nice", type=int, default=0, help="run the compaction under `nice -n N`")
    parser.add_argument("--people", type=int, default=50)
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="facesearch-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = run_load(workdir, faces=args.faces, duration=args.duration, users=args.users, workers=args.workers,
                      index_type=None if args.index_type == "none" else args.index_type, compact_at=args.compact_at,
                      people=args.people, lfw=args.lfw, compact_nice=args.compact_nice)
    print(json.dumps(result, indent=2))
    sys.exit(1 if result["audit_failed"] else 0)


if __name__ == "__main__":
    main()
