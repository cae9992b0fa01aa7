"""`facesearch demo`: the main job, start to finish, on real photos or on a generated face set.

With `--photos DIR` (`DIR/<person>/<photo>.jpg`, e.g. LFW): index a few photos of each of the
first people with the default model, calibrate the index's "unknown" threshold from the gallery
itself, then query each one's held-out photo and the photo of a few people who were never
enrolled (they should come back "unknown").

Without: train a tiny MobileFaceNet on synthetic identities, export it, index a gallery of
unseen images of those identities, calibrate the threshold on generated people who are neither
trained on nor enrolled, then query held-out images (and 20 identities the gallery has never
seen). Each step is skipped when its output exists.

Twenty people are far fewer than the 500 a 1% false-alarm rate needs (`facesearch.index.openset.calibration`), so
the threshold is calibrated at a higher rate and the demo says which. The synthetic model was
trained on the very people it enrols, which pushes them apart: their leave-one-out scores
understate a stranger's, so that path measures on generated strangers (`calibrate --strangers`)
instead of estimating from the gallery.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from facesearch.cli.options import friendly_errors
from facesearch.embedder.core.constants import DEFAULT_BATCH_SIZE

IDENTITIES = 20  # enrolled; the demo trains on them
VISITORS = 20  # extra identities, never trained on or enrolled: they should be "unknown" (enough to count)
TRAIN_PER_IDENTITY = 30
GALLERY_PER_IDENTITY = 3
CALIBRATION_STRANGERS = 100  # generated people, neither trained on, enrolled nor queried
SYNTHETIC_FPIR = 0.1  # the rate the synthetic demo's threshold is measured for (100 strangers resolve 0.05)


@friendly_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="Folder for the demo's data, model and index.")] = Path(".demo"),
    photos: Annotated[Optional[Path], typer.Option(help="Real photos, DIR/<person>/<photo>.jpg: index a few of each person with the default model and query held-out ones.")] = None,
):
    """Run the main job end to end: on real photos (--photos) with the default model, else train on a generated face set."""
    run_demo(workdir, photos)


def _step(text: str) -> None:
    print(f"==> {text}", file=sys.stderr, flush=True)


def run_demo(workdir: Path, photos: Path | None = None) -> dict:
    """The photo demo when `photos` is given, else the synthetic one; returns the summary."""
    if photos is not None:
        return run_photo_demo(Path(photos), Path(workdir))
    return run_synthetic_demo(Path(workdir))


def run_synthetic_demo(workdir: Path) -> dict:
    """Run every step in `workdir` and print each probe's answer; returns the summary."""
    from facesearch.train.synthetic import make_synthetic_faces

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
        from facesearch.cli.output import format_train
        from facesearch.train.config import get_preset
        from facesearch.train.fit import train

        result = train(faces, run_dir, dataclasses.replace(get_preset("tiny"), epochs=8), verbose=0)
        print(format_train(result.to_dict()), file=sys.stderr)
    if not (model_dir / "model_card.json").is_file():
        _step(f"exporting the embedding layer to {model_dir} (SavedModel + ONNX, parity checked)")
        from facesearch.cli.output import format_export
        from facesearch.cli.training import run_export

        print(format_export(run_export(run_dir, model_dir, onnx=True, savedmodel=True)), file=sys.stderr)
    _step(f"indexing {gallery} into {index_dir}")
    from facesearch.cli.gallery import run_build_index
    from facesearch.cli.output import format_build_report

    report = run_build_index(gallery, model=model_dir, index=index_dir, batch_size=DEFAULT_BATCH_SIZE, strict=False,
                             rebuild=False, progress=True, aligned=True)
    print(format_build_report(report), file=sys.stderr)
    strangers = workdir / "strangers"
    if not strangers.is_dir():
        _make_strangers(strangers)
    _step(f"calibrating the 'unknown' threshold at FPIR {SYNTHETIC_FPIR:g} on {CALIBRATION_STRANGERS} generated people "
          "who are neither trained on nor enrolled (the model was trained on the enrolled ones)")
    _calibrate(index_dir, SYNTHETIC_FPIR, strangers=strangers, model=model_dir, aligned=True)
    _step(f"querying {probes}: held-out images of the enrolled identities, and {VISITORS} strangers")
    pairs = [(p, p.parent.name if int(p.parent.name.split("_")[1]) < IDENTITIES else None)
             for p in sorted(probes.glob("*/*.png"))]
    return _query_probes(pairs, index_dir, model_dir, aligned=True)


PHOTO_PEOPLE = 20  # enrolled people: the first, by name, with at least 2 photos
PHOTO_STRANGERS = 3  # people with a single photo, never enrolled
PHOTOS_PER_PERSON = 5  # at most, in the gallery


def run_photo_demo(photos: Path, workdir: Path) -> dict:
    """Index real photos with the default model (or $FACESEARCH_MODEL) and query held-out ones."""
    import shutil

    from facesearch.cli.gallery import run_build_index
    from facesearch.cli.output import format_build_report
    from facesearch.embedder.core.constants import IMAGE_EXTENSIONS
    from facesearch.embedder.core.errors import DatasetError

    if not photos.is_dir():
        raise DatasetError(f"--photos '{photos}' is not a folder of <person>/<photo> images")
    people = {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
              for d in sorted(photos.iterdir()) if d.is_dir() and not d.name.startswith(".")}
    enrolled = [n for n in people if len(people[n]) >= 2][:PHOTO_PEOPLE]
    strangers = [n for n in people if len(people[n]) == 1][:PHOTO_STRANGERS]
    if not enrolled:
        raise DatasetError(f"'{photos}' has no person folder with 2 or more photos to enrol and query")
    gallery, index_dir = workdir / "photo-gallery", workdir / "photo-index"
    shutil.rmtree(gallery, ignore_errors=True)
    probes = []
    for name in enrolled:
        (gallery / name).mkdir(parents=True)
        for p in people[name][:-1][:PHOTOS_PER_PERSON]:
            shutil.copy2(p, gallery / name / p.name)
        probes.append((people[name][-1], name))
    probes += [(people[name][0], None) for name in strangers]
    _step(f"indexing {sum(len(people[n][:-1][:PHOTOS_PER_PERSON]) for n in enrolled)} photos of "
          f"{len(enrolled)} people from {photos} into {index_dir} (the default model is converted at first use)")
    report = run_build_index(gallery, model=None, index=index_dir, batch_size=DEFAULT_BATCH_SIZE, strict=False,
                             rebuild=True, progress=True)
    print(format_build_report(report), file=sys.stderr)
    from facesearch.index.openset.calibration import lowest_supported_fpir, minimum_identities

    fpir = lowest_supported_fpir(len(enrolled))
    if fpir < 1.0:
        _step(f"calibrating the 'unknown' threshold from the gallery itself at FPIR {fpir:g}, the lowest "
              f"{len(enrolled)} people support (1% needs {minimum_identities(0.01)})")
        _calibrate(index_dir, fpir)
    else:
        _step(f"{len(enrolled)} people are too few to calibrate a threshold from (it takes 6): the model card's "
              "threshold answers")
    _step(f"querying each person's held-out photo, and {len(strangers)} people who were never enrolled")
    return _query_probes(probes, index_dir, Path(report["model_dir"]))


def _make_strangers(folder: Path) -> None:
    """`CALIBRATION_STRANGERS` generated people after the enrolled ones and the visitors, one photo each."""
    import shutil

    from facesearch.train.synthetic import make_synthetic_faces

    first = IDENTITIES + VISITORS
    make_synthetic_faces(folder, first + CALIBRATION_STRANGERS, 1, start=TRAIN_PER_IDENTITY + GALLERY_PER_IDENTITY)
    for person in sorted(folder.iterdir()):
        if int(person.name.split("_")[1]) < first:
            shutil.rmtree(person)


def _calibrate(index_dir: Path, fpir: float, **strangers) -> None:
    from facesearch.cli.calibration import run_calibrate
    from facesearch.cli.output import format_calibration

    print(format_calibration(run_calibrate(index_dir, fpir=fpir, progress=False, **strangers)), file=sys.stderr)


def _query_probes(probes: list[tuple[Path, str | None]], index_dir: Path, model_dir: Path, *,
                  aligned: bool = False) -> dict:
    """Query each probe's largest face; `truth` None marks a stranger, who should come back unknown."""
    from facesearch.embedder.core.errors import NoFaceFoundError
    from facesearch.embedder.runtime import Embedder
    from facesearch.index import GalleryIndex
    from facesearch.index.query import FaceSearcher

    embedder = Embedder(model_dir, aligned=aligned or None)
    right = rejected = no_face = 0
    with GalleryIndex.open(index_dir) as gallery:
        searcher = FaceSearcher(gallery, embedder)
        decision = searcher.decision()
        for path, truth in probes:
            try:
                face = searcher.answer_photo(path, k=3, faces="largest")["faces"][0]
            except NoFaceFoundError:
                no_face += 1
                print(f"{_label(path)}  ->  no face found")
                continue
            if truth is None:
                rejected += face["verdict"] == "unknown"
                how = "never enrolled"
            else:
                right += face["verdict"] == truth
                how = "right" if face["verdict"] == truth else \
                    f"missed: below the threshold, is {truth}" if face["verdict"] == "unknown" else f"WRONG, is {truth}"
            print(f"{_label(path):<40} ->  {face['verdict']:<26} best score {face['matches'][0]['score']:.3f}  "
                  f"decision {face['decision']['statistic']:.3f}  ({how})")
    known = sum(t is not None for _, t in probes)
    strangers = len(probes) - known
    print(f"\nidentified {right}/{known} held-out photos of enrolled people; {rejected}/{strangers} people "
          f"never enrolled answered 'unknown' (model {embedder.card.name}, {decision.rule} rule, threshold "
          f"{decision.threshold:.3f} {_source(decision)}{'' if not no_face else f'; {no_face} photo(s) without a face'})")
    print(f"try it yourself: facesearch query {probes[0][0]} --index {index_dir}")
    return {"identified": right, "enrolled_probes": known, "strangers_rejected": rejected,
            "strangers": strangers, "no_face": no_face}


def _source(decision) -> str:
    if decision.source in ("calibration", "--fpir"):
        how = "measured on strangers" if decision.method == "strangers" else "self-calibrated from the gallery"
        return f"{how} for FPIR {decision.fpir:g}"
    return {"model-card": "from the model card", "default": "uncalibrated"}.get(decision.source, decision.source)


def _label(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"
