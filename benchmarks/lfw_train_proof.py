"""Proof of learning on real faces: train MobileFaceNet + ArcFace from scratch on LFW, test on unseen people.

    python benchmarks/lfw_train_proof.py --lfw-dir ../shared/lfw --work .proof [--epochs 3]

1. Align: every photo of the people in `peopleDevTrain.txt` with at least 2 photos is detected
   (MTCNN, largest face) and aligned to the preset's template (112x96: `sphereface-112x96`), one
   PNG per photo under WORK/aligned/<name>/ (kept between runs).
2. Train: `facesearch train WORK/aligned --out WORK/run` with the preset (batch 64 by default).
3. Export the trained run and the same network as initialised before training (built with the
   run's seed, saved to WORK/untrained.keras) with `facesearch export`.
4. Evaluate both with `facesearch eval lfw --pairs pairsDevTest.txt`: 500 pairs of people who are
   in `peopleDevTest.txt`, never in training (LFW's View 1 split keeps the two sets of people apart).

Every step is the user's own command line; this script only chains them and tabulates the two
accuracies. The result is written to WORK/proof.json and printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def training_people(lfw_dir: Path, min_images: int = 2) -> list[tuple[str, int]]:
    """(name, photo count) of the people in peopleDevTrain.txt with at least `min_images` photos."""
    lines = (lfw_dir / "peopleDevTrain.txt").read_text().split("\n")[1:]
    people = [(name, int(count)) for name, count in (line.split("\t") for line in lines if line.strip())]
    return [(name, count) for name, count in people if count >= min_images]


def align_people(lfw_dir: Path, people: list[tuple[str, int]], out: Path, template_name: str) -> dict:
    """Write the aligned largest face of every photo of `people` under `out`; skips photos already done."""
    from PIL import Image

    from facesearch.embedder.align import align_face, get_template
    from facesearch.embedder.detect import Detector
    from facesearch.embedder.evaluation.lfw import find_images_dir, image_path
    from facesearch.embedder.images import read_image

    images = find_images_dir(lfw_dir)
    template = get_template(template_name)
    detector = Detector()
    jobs = [(name, n) for name, count in people for n in range(1, count + 1)]

    def one(job: tuple[str, int]) -> str:
        name, n = job
        target = out / name / f"{name}_{n:04d}.png"
        if target.exists():
            return "kept"
        faces = detector.detect(read_image(images / image_path(name, n)))
        if not faces:
            return "no face"
        face = max(faces, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp.png")
        Image.fromarray(align_face(read_image(images / image_path(name, n)), face.landmarks, template)).save(tmp)
        os.replace(tmp, target)
        return "aligned"

    start = time.perf_counter()
    counts: dict[str, int] = {}
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        for i, status in enumerate(pool.map(one, jobs), 1):
            counts[status] = counts.get(status, 0) + 1
            if i % 500 == 0:
                print(f"  aligned {i}/{len(jobs)}", file=sys.stderr)
    return {"photos": len(jobs), "people": len(people), "seconds": round(time.perf_counter() - start, 1)} | counts


def facesearch(*args: str) -> dict:
    """Run `facesearch ARGS --json` in this interpreter's environment and return its answer."""
    cmd = [sys.executable, "-c", "from facesearch.cli.main import main; main()", *args, "--json"]
    print("$ facesearch " + " ".join(args), file=sys.stderr)
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    return json.loads(done.stdout)


def save_untrained(run: Path, target: Path) -> None:
    """The run's network as built before its first step: same config, same seed, same class count."""
    import keras

    from facesearch.train.config import TrainConfig
    from facesearch.train.data import LABELS_FILE
    from facesearch.train.models import build_views

    config = TrainConfig.load(run)
    num_classes = len(json.loads((run / LABELS_FILE).read_text())["class_names"])
    keras.utils.set_random_seed(config.seed)
    build_views(config, num_classes).train_model.save(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lfw-dir", type=Path, default=Path(os.environ.get("FACESEARCH_LFW", ROOT.parent / "shared/lfw")))
    parser.add_argument("--work", type=Path, default=ROOT / ".proof")
    parser.add_argument("--preset", default="mobilefacenet")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from facesearch.train.config import get_preset

    work = args.work.resolve()
    aligned, run = work / "aligned", work / "run"
    people = training_people(args.lfw_dir)
    report: dict = {"lfw_dir": str(args.lfw_dir), "preset": args.preset, "epochs": args.epochs,
                    "batch_size": args.batch_size, "cpu_count": os.cpu_count()}
    report["align"] = align_people(args.lfw_dir, people, aligned, get_preset(args.preset).alignment_template)
    print(f"aligned: {report['align']}", file=sys.stderr)

    start = time.perf_counter()
    trained = facesearch("train", str(aligned), "--out", str(run), "--preset", args.preset,
                         "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", str(args.seed))
    report["train"] = {k: trained[k] for k in ("num_classes", "num_train_images", "num_val_images",
                                               "initial_val_pair_acc", "val_pair_acc", "seconds")}
    report["train"]["loss"] = trained["history"].get("loss")
    report["train"]["wall_seconds"] = round(time.perf_counter() - start, 1)
    save_untrained(run, work / "untrained.keras")

    for label, checkpoint in (("untrained", work / "untrained.keras"), ("trained", run)):
        model_dir = work / f"model-{label}"
        facesearch("export", str(checkpoint), "--out", str(model_dir), "--no-savedmodel")
        answer = facesearch("eval", "lfw", "--lfw-dir", str(args.lfw_dir), "--model", str(model_dir),
                            "--pairs", "pairsDevTest.txt", "--no-roc")
        v = answer["verification"]
        report[label] = {"accuracy": v["accuracy"], "accuracy_std": v["accuracy_std"], "auc": v["auc"],
                         "pairs": v["pairs"], "pairs_excluded": answer["pairs_excluded"]}
    (work / "proof.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
