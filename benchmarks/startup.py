"""Start-up: a cold `facesearch query` against `python -c "import tensorflow"` on the same machine.

    python benchmarks/startup.py [--photos DIR] [--n 20] [--runs 7]

Builds a small index from the first `--n` photos of DIR (default LFW beside the checkout) with the
default model, runs one query first so that the start-up cache (`<cache>/derived`) exists, as it
does after any first run, then times whole processes in turn (query, import, query, import, ...)
so that drift in machine load hits both alike. Prints each side's median wall time and the median
of the pair-by-pair ratios, then the same as JSON. The issue's target: a ratio under 0.25.
Needs the default model installed (`facesearch models install dlib-resnet`) and TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PHOTOS = ROOT.parent / "shared" / "lfw" / "images_deepfunneled"


def _timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of <person>/<photo>.jpg")
    parser.add_argument("--n", type=int, default=20, help="photos in the index")
    parser.add_argument("--runs", type=int, default=7, help="timed runs of each command")
    args = parser.parse_args(argv)
    if not args.photos.is_dir():
        parser.error(f"no photo folder at {args.photos}")
    script = Path(sys.executable).with_name("facesearch")  # the console script, as a user runs it
    facesearch = [str(script)] if script.exists() else [sys.executable, "-c", "from facesearch.cli.main import main; main()"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory() as tmp:
        gallery, index = Path(tmp) / "gallery", Path(tmp) / "index"
        people = sorted(p for p in args.photos.iterdir() if p.is_dir())
        files = [f for person in people for f in sorted(person.iterdir())][: args.n]
        for f in files:
            (gallery / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, gallery / f.parent.name / f.name)
        subprocess.run([*facesearch, "build-index", str(gallery), "--index", str(index), "--json"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        query = [*facesearch, "query", str(files[0]), "--index", str(index), "--json"]
        tensorflow = [sys.executable, "-c", "import tensorflow"]
        _timed(query, env), _timed(tensorflow, env)  # warm-up: the start-up cache, the page cache
        times = {"query": [], "import tensorflow": []}
        for _ in range(args.runs):
            times["query"].append(_timed(query, env))
            times["import tensorflow"].append(_timed(tensorflow, env))
    ratios = [q / t for q, t in zip(times["query"], times["import tensorflow"])]
    result = {name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v)} for name, v in times.items()}
    result["ratio"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    result |= {"runs": args.runs, "photos": len(files), "cpus": os.cpu_count(), "load_average": os.getloadavg()[0],
               "when": time.strftime("%Y-%m-%d %H:%M")}
    for name, v in times.items():
        print(f"{name:18s} median {statistics.median(v) * 1000:6.0f} ms (min {min(v) * 1000:.0f}, max {max(v) * 1000:.0f})")
    print(f"query / import tensorflow, pair by pair: median {result['ratio']['median']:.3f} "
          f"(min {result['ratio']['min']:.3f}, max {result['ratio']['max']:.3f}) over {args.runs} pairs")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
