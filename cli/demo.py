"""`facesearch demo`: the whole pipeline on a generated face set, start to finish.

Train a tiny MobileFaceNet on synthetic identities, export it, index a gallery of unseen
images of those identities, then query held-out images (and two identities the gallery has
never seen, which should come back "unknown"). Each step is skipped when its output exists.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

IDENTITIES = 20  # enrolled; the demo trains on them
VISITORS = 2  # extra identities, never trained on or enrolled: they should be "unknown"
TRAIN_PER_IDENTITY = 30
GALLERY_PER_IDENTITY = 3


def _step(text: str) -> None:
    print(f"==> {text}", file=sys.stderr, flush=True)


def run_demo(workdir: Path) -> dict:
    """Run every step in `workdir` and print each probe's answer; returns the summary."""
    from train.synthetic import make_synthetic_faces

    workdir = Path(workdir)
    faces, gallery, probes = workdir / "faces", workdir / "gallery", workdir / "probes"
    run_dir, model_dir, index_dir = workdir / "run", workdir / "model", workdir / "index"
    if not faces.is_dir():
        _step(f"generating {IDENTITIES} synthetic identities in {faces}")
        make_synthetic_faces(faces, IDENTITIES, TRAIN_PER_IDENTITY)
        make_synthetic_faces(gallery, IDENTITIES, GALLERY_PER_IDENTITY, start=TRAIN_PER_IDENTITY)
        make_synthetic_faces(probes, IDENTITIES + VISITORS, 1, start=TRAIN_PER_IDENTITY + GALLERY_PER_IDENTITY)
    if not (run_dir / "model.keras").is_file():
        _step(f"training the tiny preset in {run_dir} (about a minute on 2 cores)")
        from cli.output import format_train
        from train.config import get_preset
        from train.fit import train

        result = train(faces, run_dir, dataclasses.replace(get_preset("tiny"), epochs=8), verbose=0)
        print(format_train(result.to_dict()), file=sys.stderr)
    if not (model_dir / "model_card.json").is_file():
        _step(f"exporting the embedding layer to {model_dir} (SavedModel + ONNX, parity checked)")
        from cli.commands import run_export
        from cli.output import format_export

        print(format_export(run_export(run_dir, model_dir, onnx=True, savedmodel=True)), file=sys.stderr)
    _step(f"indexing {gallery} into {index_dir}")
    from cli.commands import run_build_index
    from cli.output import format_build_report

    report = run_build_index(gallery, model=model_dir, index=index_dir, batch_size=64, strict=False,
                             rebuild=False, progress=True, aligned=True)
    print(format_build_report(report), file=sys.stderr)
    _step(f"querying {probes}: held-out images of the enrolled identities, and {VISITORS} strangers")
    return _query_probes(probes, index_dir, model_dir, enrolled=IDENTITIES)


def _query_probes(probes: Path, index_dir: Path, model_dir: Path, enrolled: int) -> dict:
    from embedder.runtime import Embedder
    from index import GalleryIndex

    embedder = Embedder(model_dir, aligned=True)
    right = known_total = rejected = strangers = 0
    with GalleryIndex.open(index_dir, embedder.card) as gallery:
        paths = sorted(probes.glob("*/*.png"))
        vectors = embedder.embed([embedder.faces(p)[0].image for p in paths])
        for path, vector in zip(paths, vectors):
            truth = path.parent.name
            result = gallery.rank_identities(vector, k=3)
            if int(truth.split("_")[1]) >= enrolled:
                strangers += 1
                rejected += result.verdict == "unknown"
                note = "stranger, not enrolled"
            else:
                known_total += 1
                right += result.verdict == truth
                note = "right" if result.verdict == truth else f"WRONG, is {truth}"
            print(f"{path.relative_to(probes)}  ->  {result.verdict:<8} best score {result.best.score:.3f}  ({note})")
        threshold = result.threshold
    print(f"\nidentified {right}/{known_total} held-out faces of enrolled people; "
          f"{rejected}/{strangers} strangers answered 'unknown' at threshold {threshold:.2f} "
          "(an uncalibrated default: see the README on thresholds)")
    print(f"try it yourself: facesearch query {paths[0]} --index {index_dir}")
    return {"identified": right, "enrolled_probes": known_total, "strangers_rejected": rejected,
            "strangers": strangers}
