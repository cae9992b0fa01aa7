"""Kill -9 under traffic: `facesearch serve` killed at random moments, then restarted and audited.

    python benchmarks/crash.py [--kills 20] [--seed 0] [--workers 1] [--clients 3] [--workdir W]

Each round starts `facesearch serve` on the same index (empty at first: the server creates it), runs
enrolments (one or two LFW photos of a person under a new identity, one commit), removals of
acknowledged identities and queries from `--clients` threads, and sends SIGKILL to every server
process after a seeded random delay (`--min-delay` .. `--max-delay` seconds). After each restart it
audits the index against what the server had answered (benchmarks/traffic.py: every acknowledged
enrolment found by its face ids, every acknowledged removal gone, nothing refused present, nothing
half-written, the index readable on disk). Exits 1 when an audit finds a problem.

Needs the default model (`facesearch models install dlib-resnet`), the [serve] extra and LFW
(`$FACESEARCH_LFW`, else ../shared/lfw).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from traffic import DEFAULT_LFW, Ledger, ServeProcess, audit, audit_failed, enrol, lfw_photos, remove  # noqa: E402

MIX = {"enrol": 0.6, "remove": 0.2, "query": 0.2}  # mostly writes: they are what a crash can lose


def traffic(url: str, ledger: Ledger, photos: list[list[bytes]], stop: threading.Event, rng: random.Random,
            served: list[int]) -> None:
    """One client until `stop` (or the server dies): enrolments, removals and queries by MIX."""
    import httpx

    with httpx.Client(base_url=url, timeout=60, trust_env=False) as c:
        while not stop.is_set():
            person = rng.choice(photos)
            op = rng.choices(list(MIX), weights=list(MIX.values()))[0]
            if op == "enrol":
                outcome, _ = enrol(c, ledger, "crash", person[:rng.choice((1, 2))])
            elif op == "remove":
                done = remove(c, ledger, rng)
                outcome = done[0] if done else "none"
            else:
                try:
                    outcome = str(c.post("/v1/query", files={"photo": ("q.jpg", person[-1], "image/jpeg")}).status_code)
                except httpx.HTTPError:
                    outcome = "no answer"
            if outcome == "no answer":
                return  # the server is gone; the next round starts a new one
            served[0] += 1


def run_crash(workdir: Path, *, kills: int = 20, seed: int = 0, workers: int = 1, clients: int = 3,
              min_delay: float = 1.0, max_delay: float = 4.0, people: int = 40, lfw: Path = DEFAULT_LFW,
              model: Path | None = None, threads: int = 1, log=print) -> dict:
    """`kills` rounds of traffic + SIGKILL + restart + audit; the audits and the ledger's counts."""
    photos = lfw_photos(lfw, people)
    index = workdir / "index"
    ledger, rounds, rng = Ledger(), [], random.Random(seed)
    args = ["--threads", str(threads), "--workers", str(workers), "--log-level", "warning"]
    started = time.perf_counter()
    for k in range(kills + 1):
        server = ServeProcess(index, model, workdir / "serve.log", *args)
        found = audit(server.url, index, ledger)  # what the previous round left, after a restart
        rounds.append({"round": k, "start_s": round(server.start_seconds, 2), **found})
        if audit_failed(found):
            log(f"round {k}: audit FAILED: {json.dumps(found)[:2000]}")
        if k == kills:
            server.stop()
            break
        stop, served = threading.Event(), [0]
        threads_ = [threading.Thread(target=traffic, args=(server.url, ledger, photos, stop,
                                                           random.Random(f"{seed}-{k}-{i}"), served))
                    for i in range(clients)]
        for t in threads_:
            t.start()
        delay = rng.uniform(min_delay, max_delay)
        time.sleep(delay)
        server.kill()
        stop.set()
        for t in threads_:
            t.join(120)
        rounds[-1].update(killed_after_s=round(delay, 2), requests=served[0])
        log(f"round {k}: killed after {delay:.2f} s, {served[0]} requests answered; "
            f"{json.dumps(ledger.counts())}")
    failed = [r for r in rounds if audit_failed(r)]
    return {"kills": kills, "seed": seed, "workers": workers, "clients": clients, **ledger.counts(),
            "uncertain_present_at_end": rounds[-1]["uncertain_present"],
            "uncertain_absent_at_end": rounds[-1]["uncertain_absent"],
            "audits": len(rounds), "failed_audits": len(failed), "failures": failed[:3], "errors": ledger.errors[:20],
            "lost": sum(len(r["lost"]) for r in rounds), "resurrected": sum(len(r["resurrected"]) for r in rounds),
            "half": sum(len(r["half"]) for r in rounds), "seconds": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--min-delay", type=float, default=1.0)
    parser.add_argument("--max-delay", type=float, default=4.0)
    parser.add_argument("--lfw", type=Path, default=DEFAULT_LFW)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="facesearch-crash-"))
    workdir.mkdir(parents=True, exist_ok=True)
    result = run_crash(workdir, kills=args.kills, seed=args.seed, workers=args.workers, clients=args.clients,
                       min_delay=args.min_delay, max_delay=args.max_delay, lfw=args.lfw, model=args.model)
    print(json.dumps(result, indent=2))
    sys.exit(1 if result["failed_audits"] else 0)


if __name__ == "__main__":
    main()
