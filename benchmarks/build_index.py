"""build-index throughput: `index.build_index` (batched, threaded readers) vs a photo-at-a-time loop.

    python benchmarks/build_index.py --photos DIR [--model MODEL_DIR] [--limit 1000] [--runs 3] [--aligned]

Without --model, an untrained full-size MobileFaceNet (112x96) is exported to a temporary folder
first (speed does not depend on the weights). The baseline reads each photo, takes its faces and
embeds them one photo at a time, as a naive script would; both sides use the same Embedder.
Runs alternate (ours, baseline, ours, ...) so drift in machine load hits both alike; prints
medians and the ratio as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _untrained_mobilefacenet(folder: Path) -> Path:
    import keras

    from facesearch.embedder.export import export_model
    from facesearch.train.config import get_preset
    from facesearch.train.models import build_views

    keras.utils.set_random_seed(0)
    views = build_views(get_preset("mobilefacenet"), num_classes=100)
    export_model(views.embedding_model, folder / "model", savedmodel=False)
    return folder / "model"


def _gallery(photos: Path, limit: int, folder: Path) -> int:
    from facesearch.embedder.core.constants import IMAGE_EXTENSIONS

    files = sorted(p for p in photos.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)[:limit]
    for p in files:
        target = folder / p.relative_to(photos)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, target)
    return len(files)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, required=True, help="folder of <identity>/<photo> images")
    parser.add_argument("--model", type=Path, help="model folder (default: untrained full-size MobileFaceNet)")
    parser.add_argument("--limit", type=int, default=1000, help="photos, first in sorted order")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="build_index batch size")
    parser.add_argument("--aligned", action="store_true", help="photos are aligned crops: no detection")
    args = parser.parse_args(argv)

    from facesearch.embedder.runtime import Embedder
    from facesearch.index import build_index

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or _untrained_mobilefacenet(tmp)
        n = _gallery(args.photos, args.limit, tmp / "gallery")
        embedder = Embedder(model, aligned=True if args.aligned else None)
        paths = sorted((tmp / "gallery").rglob("*.*"))
        ours, baseline = [], []
        for _run in range(args.runs):
            shutil.rmtree(tmp / "index", ignore_errors=True)
            start = time.perf_counter()
            report = build_index(tmp / "gallery", tmp / "index", embedder, batch_size=args.batch_size)
            ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            for p in paths:
                faces = embedder.faces(p)
                if faces:
                    embedder.embed([faces[0].image], batch_size=1)
            baseline.append(time.perf_counter() - start)
    result = {"photos": n, "model": embedder.card.name, "aligned": embedder.aligned, "cpus": os.cpu_count(),
              "vectors": report.vectors, "runs": args.runs,
              "build_index_s": statistics.median(ours), "baseline_s": statistics.median(baseline),
              "build_index_images_per_s": n / statistics.median(ours),
              "baseline_images_per_s": n / statistics.median(baseline),
              "speedup": statistics.median(b / o for o, b in zip(ours, baseline)),
              "all_runs_s": {"build_index": ours, "baseline": baseline}}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
