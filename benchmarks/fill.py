"""Photo -> face -> vector throughput: `build_index` with 1 and N worker processes vs a dlib pipeline.

    python benchmarks/fill.py [--photos DIR] [--n 1000] [--seed 0] [--workers 1 2] [--runs 1] [--stages 200]

The same `--n` photos (a seeded sample of DIR, default LFW beside the checkout) are copied into a
temporary `<person>/<photo>` gallery. Each run is a fresh process, as a user's command is, start-up
included; runs alternate between the configurations (A B C A B C ...) so drift in machine load hits
each alike. The anchor is what a user would write with face_recognition's recipe on `dlib` itself
(the `dlib-bin` wheel): HOG detector upsampled once, 5-point predictor, ResNet descriptor of every
face, one photo at a time. Prints a table (photos/s, ratio to the anchor, scaling, CPU per photo,
peak RSS of the main process and of the largest worker) and the CPU per photo by stage of each
pipeline (measured one photo after another in one process), then the same as JSON.
Needs the default model installed (`facesearch models install dlib-resnet`).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "lfw" / "images_deepfunneled"


def _usage() -> dict:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"cpu_s": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
            "peak_rss_mib": me.ru_maxrss / 1024, "peak_worker_rss_mib": kids.ru_maxrss / 1024}


def child_facesearch(gallery: Path, workers: int) -> dict:
    from facesearch.embedder.dlib.models import installed_model_dir
    from facesearch.embedder.runtime import Embedder
    from facesearch.index import build_index

    start = time.perf_counter()
    embedder = Embedder(installed_model_dir())
    with tempfile.TemporaryDirectory() as tmp:
        report = build_index(gallery, Path(tmp) / "index", embedder, workers=workers)
    return {"seconds": time.perf_counter() - start, "embed_seconds": report.seconds["embed"],
            "vectors": report.vectors, "skipped": len(report.skipped),
            "backend": getattr(embedder, "backend", "onnxruntime")} | _usage()


def _dlib_models():
    import dlib

    from facesearch.embedder.dlib.weights import find_weights_file

    weights = find_weights_file()
    return (dlib, dlib.get_frontal_face_detector(),
            dlib.shape_predictor(str(weights.parent / "shape_predictor_5_face_landmarks.dat")),
            dlib.face_recognition_model_v1(str(weights)))


def child_anchor(gallery: Path) -> dict:
    start = time.perf_counter()
    dlib, detect, predict, describe = _dlib_models()
    vectors = 0
    for path in sorted(p for p in gallery.rglob("*") if p.is_file()):
        image = dlib.load_rgb_image(str(path))
        for rect in detect(image, 1):  # face_recognition's face_locations(model="hog"), upsampled once
            describe.compute_face_descriptor(image, predict(image, rect))
            vectors += 1
    return {"seconds": time.perf_counter() - start, "vectors": vectors, "backend": "dlib"} | _usage()


def child_stages(gallery: Path, n: int, batch: int = 16) -> dict:
    """CPU ms per photo of each step of both pipelines, one photo (or chunk) after another, one process."""
    from hashlib import sha256

    from facesearch.embedder.crop import crop_faces
    from facesearch.embedder.dlib.models import installed_model_dir
    from facesearch.embedder.images import read_image_reduced
    from facesearch.embedder.runtime import Embedder

    paths = sorted(p for p in gallery.rglob("*") if p.is_file())[:n]
    embedder = Embedder(installed_model_dir(), threads=1, batches=True)  # as a worker of build_index has it
    clock = time.process_time
    ours = dict.fromkeys(("read + sha256", "decode", "detect", "landmarks + chip", "embed"), 0.0)
    for i in range(0, len(paths), batch):
        t = clock()
        data = [p.read_bytes() for p in paths[i:i + batch]]
        _ = [sha256(d).hexdigest() for d in data]
        ours["read + sha256"] += clock() - t
        t = clock()
        images = [read_image_reduced(p, data=d, min_size=(1280, 1280))[0] for p, d in zip(paths[i:], data)]
        ours["decode"] += clock() - t
        t = clock()
        found = embedder.detector.detect_many(images)
        ours["detect"] += clock() - t
        t = clock()
        faces = [(image, d.landmarks) for image, dets in zip(images, found) for d in dets]
        crops = crop_faces([f[0] for f in faces], [f[1] for f in faces], embedder.template)
        ours["landmarks + chip"] += clock() - t
        t = clock()
        if crops:
            embedder.embed(crops)
        ours["embed"] += clock() - t
    dlib, detect, predict, describe = _dlib_models()
    anchor = dict.fromkeys(("decode", "detect (HOG, upsample 1)", "landmarks", "chip + descriptor"), 0.0)
    for path in paths:
        t = clock()
        image = dlib.load_rgb_image(str(path))
        anchor["decode"] += clock() - t
        t = clock()
        rects = detect(image, 1)
        anchor["detect (HOG, upsample 1)"] += clock() - t
        for rect in rects:
            t = clock()
            shape = predict(image, rect)
            anchor["landmarks"] += clock() - t
            t = clock()
            describe.compute_face_descriptor(image, shape)
            anchor["chip + descriptor"] += clock() - t
    per_photo = {k: 1000 * v / len(paths) for k, v in ours.items()}
    return {"photos": len(paths), "backend": embedder.backend, "detector_backend": embedder.detector.backend,
            "facesearch_ms": per_photo, "anchor_ms": {k: 1000 * v / len(paths) for k, v in anchor.items()}}


def _child(args: list[str]) -> dict:
    code = []
    if "--code" in args:
        i = args.index("--code")
        code, args = args[i:i + 2], args[:i] + args[i + 2:]
    out = subprocess.run([sys.executable, __file__, *code, "--child", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"benchmark child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _gallery(photos: Path, n: int, seed: int, folder: Path) -> int:
    files = sorted(p for p in photos.rglob("*.jpg"))
    for p in random.Random(seed).sample(files, min(n, len(files))):
        target = folder / p.relative_to(photos)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, target)
    return min(n, len(files))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of <person>/<photo>.jpg")
    parser.add_argument("--n", type=int, default=1000, help="photos, a seeded sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=1, help="runs of each configuration (medians are printed)")
    parser.add_argument("--stages", type=int, default=200, help="photos for the per-stage CPU breakdown (0: none)")
    parser.add_argument("--no-anchor", action="store_true", help="skip the dlib pipeline")
    parser.add_argument("--before", type=Path, help="another checkout (e.g. `git worktree add ../before HEAD~1`): "
                        "also time its build_index with the same --workers (threads, in code before issue 14)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--code", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.code is not None:
        sys.path.insert(0, str(args.code.resolve()))
    if args.child:
        kind, gallery, *rest = args.child
        result = {"facesearch": lambda: child_facesearch(Path(gallery), int(rest[0])),
                  "anchor": lambda: child_anchor(Path(gallery)),
                  "stages": lambda: child_stages(Path(gallery), int(rest[0]))}[kind]()
        print(json.dumps(result))
        return 0

    configs = [(f"facesearch, {w} worker{'s' * (w > 1)}", ["facesearch", str(w)]) for w in args.workers]
    if args.before is not None:
        configs += [(f"before, {w} reader thread{'s' * (w > 1)}", ["facesearch", str(w), "--code", str(args.before)])
                    for w in args.workers]
    if not args.no_anchor:
        configs.append(("dlib pipeline (anchor)", ["anchor"]))
    with tempfile.TemporaryDirectory(prefix="facesearch-fill-") as tmp:
        gallery = Path(tmp) / "gallery"
        n = _gallery(args.photos, args.n, args.seed, gallery)
        runs: dict[str, list[dict]] = {name: [] for name, _ in configs}
        for _ in range(args.runs):
            for name, child in configs:
                kind, *rest = child
                runs[name].append(_child([kind, str(gallery), *rest]))
        stages = _child(["stages", str(gallery), str(args.stages)]) if args.stages else None
    table = {}
    for name, results in runs.items():
        seconds = statistics.median(r["seconds"] for r in results)
        table[name] = {"photos_per_s": n / seconds, "seconds": seconds, "cpu_ms_per_photo":
                       1000 * statistics.median(r["cpu_s"] for r in results) / n,
                       "peak_rss_mib": max(r["peak_rss_mib"] for r in results),
                       "peak_worker_rss_mib": max(r["peak_worker_rss_mib"] for r in results),
                       "vectors": results[0]["vectors"], "backend": results[0]["backend"], "runs": len(results)}
    anchor = table.get("dlib pipeline (anchor)")
    print(f"{n} photos from {args.photos} (seed {args.seed}), {os.cpu_count()} CPUs, median of {args.runs} run(s), "
          f"each a fresh process, start-up included; load average {os.getloadavg()[0]:.1f} at the end")
    print("| pipeline | photos/s | x anchor | CPU ms/photo | peak RSS main / worker (MiB) | vectors |")
    print("|---|---|---|---|---|---|")
    for name, row in table.items():
        ratio = f"{row['photos_per_s'] / anchor['photos_per_s']:.1f}x" if anchor else "-"
        print(f"| {name} ({row['backend']}) | {row['photos_per_s']:.1f} | {ratio} | {row['cpu_ms_per_photo']:.1f} | "
              f"{row['peak_rss_mib']:.0f} / {row['peak_worker_rss_mib']:.0f} | {row['vectors']} |")
    ws = sorted(args.workers)
    if len(ws) > 1:
        lo, hi = (table[f"facesearch, {w} worker{'s' * (w > 1)}"]["photos_per_s"] for w in (ws[0], ws[-1]))
        print(f"scaling {ws[0]} -> {ws[-1]} workers: {hi / lo:.2f}x")
    if stages:
        print(f"CPU ms per photo by stage ({stages['photos']} photos, one process, one thread; "
              f"embedder on {stages['backend']}, detector on {stages['detector_backend']}):")
        for side in ("facesearch_ms", "anchor_ms"):
            print(f"  {side[:-3]:10s} " + ", ".join(f"{k} {v:.2f}" for k, v in stages[side].items())
                  + f"; total {sum(stages[side].values()):.2f}")
    print(json.dumps({"photos": n, "table": table, "stages": stages, "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
