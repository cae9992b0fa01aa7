"""`facesearch eval`: LFW pair verification and gallery/probe identification, as plain-dict answers.

Each photo is taken through `Embedder.faces` and its largest face is kept; a photo that cannot be
read or shows no face is a failure to enrol: counted and listed in the answer, never fatal, and
the pairs or probes it belongs to are left out of the figures (their number is reported).
Imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from embedder import DEFAULT_BATCH_SIZE
from embedder.errors import DatasetError, ImageReadError, ModelSpecError

ProgressFn = Callable[[str, int, int], None]


@dataclasses.dataclass
class Embedded:
    """Embeddings of a list of photos. `vectors[i]` is valid only where `ok[i]`."""

    vectors: np.ndarray  # (n, d) float32, rows L2-normalised where ok
    ok: np.ndarray  # (n,) bool
    failures: list[tuple[str, str]]  # (path, reason) of each photo that gave no face vector
    seconds: float


def embed_largest_faces(embedder, paths: Sequence[Path], *, batch_size: int = DEFAULT_BATCH_SIZE, workers: int | None = None,
                        progress: ProgressFn | None = None, phase: str = "embed") -> Embedded:
    """Embed the largest face of each photo, reading the next batch while the current one is embedded.

    Args:
        embedder: an `embedder.runtime.Embedder` (or anything with `faces`, `embed`, `card`).
        paths: the photos.
        batch_size: photos per model call.
        workers: threads decoding photos; default min(4, CPU count).
        progress: called as `progress(phase, done, total)`.
        phase: the phase name given to `progress`.

    Returns:
        An `Embedded`, in the order of `paths`.
    """
    from index.embedding import select_faces

    def first_face(path: Path):
        try:
            crops = list(embedder.faces(path))
        except ImageReadError as e:
            return None, e.reason
        return (crops[select_faces(crops, "largest")[0]].image, "") if crops else (None, "no face found")

    start = time.perf_counter()
    n = len(paths)
    out = Embedded(np.zeros((n, embedder.card.embedding_size), np.float32), np.zeros(n, bool), [], 0.0)
    if progress:
        progress(phase, 0, n)
    batches = [range(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    with ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:
        pending = [pool.submit(first_face, paths[i]) for i in batches[0]] if batches else []
        for b, batch in enumerate(batches):
            read = [f.result() for f in pending]
            pending = [pool.submit(first_face, paths[i]) for i in batches[b + 1]] if b + 1 < len(batches) else []
            good = [i for i, (crop, _) in zip(batch, read) if crop is not None]
            out.failures += [(str(paths[i]), reason) for i, (crop, reason) in zip(batch, read) if crop is None]
            if good:
                out.vectors[good] = embedder.embed([crop for crop, _ in read if crop is not None], batch_size)
                out.ok[good] = True
            if progress:
                progress(phase, batch.stop, n)
    out.seconds = time.perf_counter() - start
    return out


def resolve_lfw_dir(lfw_dir: Path | None) -> Path:
    """--lfw-dir, else $FACESEARCH_LFW; the folder must exist."""
    if lfw_dir is None:
        if not os.environ.get("FACESEARCH_LFW"):
            raise DatasetError("no LFW folder given: pass --lfw-dir DIR (holding pairs.txt and the image "
                               "folder) or set FACESEARCH_LFW")
        lfw_dir = Path(os.environ["FACESEARCH_LFW"])
    if not lfw_dir.is_dir():
        raise DatasetError(f"LFW folder '{lfw_dir}' does not exist")
    return lfw_dir


def run_eval_lfw(lfw_dir: Path | None, *, model: Path | None, pairs_file: Path = Path("pairs.txt"),
                 images_dir: Path | None = None, batch_size: int = DEFAULT_BATCH_SIZE, roc_png: Path | None = None,
                 calibrate: bool = False, aligned: bool = False, progress: bool = True) -> dict:
    """Verification figures on an LFW pair file; optionally a ROC PNG and a calibrated model card.

    Pairs with an image that gave no face vector are left out (counted in `pairs_excluded`). Folds
    are the file's (pairs.txt: 10 folds of 300 + 300), else 10 stratified folds in file order.
    """
    from cli.commands import resolve_model
    from cli.progress import PhaseProgress
    from embedder.runtime import Embedder
    from train.lfw import find_images_dir, read_pairs
    from train.metrics import pair_scores, verify_pairs

    lfw_dir = resolve_lfw_dir(lfw_dir)
    pairs_path = lfw_dir / pairs_file if (lfw_dir / pairs_file).is_file() else pairs_file  # then as given
    pair_list = read_pairs(pairs_path)
    images = images_dir if images_dir is not None else find_images_dir(lfw_dir)
    embedder = Embedder(resolve_model(model), aligned=aligned or None)
    with PhaseProgress(enabled=progress) as bar:
        embedded = embed_largest_faces(embedder, [images / p for p in pair_list.images], batch_size=batch_size,
                                       progress=bar, phase="embedding LFW images")
    a, b = pair_list.pairs[:, 0], pair_list.pairs[:, 1]
    valid = embedded.ok[a] & embedded.ok[b]
    if not valid.any():
        raise DatasetError(f"no pair of '{pairs_path}' has two embedded images ({len(embedded.failures)} of "
                           f"{len(pair_list.images)} images failed, e.g. {embedded.failures[0]})")
    scores = pair_scores(embedded.vectors[a[valid]], embedded.vectors[b[valid]])
    folds = 10 if pair_list.folds is None else pair_list.folds[valid]
    report = verify_pairs(scores, pair_list.same[valid], folds)
    result = {"model": embedder.card.name, "model_dir": str(embedder.model_dir), "aligned": embedder.aligned,
              "pairs_file": str(pairs_path), "images_dir": str(images), "images": len(pair_list.images),
              "embedded": int(embedded.ok.sum()),
              "failures": [{"path": p, "reason": r} for p, r in embedded.failures],
              "pairs_excluded": int((~valid).sum()), "embed_seconds": embedded.seconds,
              "images_per_second": len(pair_list.images) / max(embedded.seconds, 1e-9),
              "verification": report.to_dict(), "roc_png": None, "calibrated": None}
    if roc_png is not None:
        result["roc_png"] = _write_roc(roc_png, report, f"{embedder.card.name} on {pairs_path.name}")
    if calibrate:
        result["calibrated"] = calibrate_card(embedder.model_dir, embedder.card,
                                              {"best_accuracy": report.threshold,
                                               "far_1e-3": report.at_far(1e-3).threshold})
    return result


def _write_roc(path: Path, report, name: str) -> str:
    from cli.roc_plot import write_roc_png

    far, tar, _ = report.roc
    marks = [(p.far, p.tar, f"TAR {p.tar:.3f} @ FAR {p.far_target:g}") for p in report.operating_points]
    write_roc_png(path, far, tar, negatives=report.negatives, marks=marks,
                  title=f"{name}: accuracy {report.accuracy:.4f} +/- {report.accuracy_std:.4f}, AUC {report.auc:.4f}")
    return str(Path(path).resolve())


def calibrate_card(model_dir: Path, card, thresholds: dict[str, float]) -> dict[str, float]:
    """Merge `thresholds` into the model card in `model_dir` (atomic write); returns the card's thresholds.

    Raises:
        ModelSpecError: the card on disk now describes other weights than `card` (re-exported meanwhile).
    """
    from embedder.model_card import ModelCard

    current = ModelCard.load(model_dir)
    if not current.same_model(card):
        raise ModelSpecError(f"the model in '{model_dir}' changed while it was being evaluated "
                             f"(now {current.describe()}); run the evaluation again")
    merged = {**current.thresholds, **{k: float(v) for k, v in thresholds.items()}}
    dataclasses.replace(current, thresholds=merged).save(model_dir)
    return merged


def run_eval_identify(gallery: Path, probes: Path, *, model: Path | None, batch_size: int = DEFAULT_BATCH_SIZE,
                      aligned: bool = False, progress: bool = True) -> dict:
    """Rank-1/rank-5 and open-set figures of the probes against a temporary index of the gallery.

    A probe's identity comes from its folder (as in `build-index`); probes whose identity has no
    folder in the gallery are impostors. Probes that give no face vector are left out (listed).
    """
    from cli.commands import resolve_model
    from cli.progress import PhaseProgress
    from embedder.runtime import Embedder
    from index import GalleryIndex, build_index, scan_folder
    from train.identification import RANKS, identification_report

    embedder = Embedder(resolve_model(model), aligned=aligned or None)
    enrolled = {f.identity for f in scan_folder(gallery).files}
    probe_files = scan_folder(probes)
    paths = [probe_files.root / f.path for f in probe_files.files]
    identities = [f.identity for f in probe_files.files]
    if not enrolled & set(identities):
        raise DatasetError(f"none of the {len(set(identities))} probe identities in '{probes}' has a folder in "
                           f"the gallery '{gallery}': name probe folders after gallery identities")
    with tempfile.TemporaryDirectory(prefix="facesearch-eval-") as tmp, PhaseProgress(enabled=progress) as bar:
        build = build_index(gallery, Path(tmp) / "index", embedder, batch_size=batch_size, progress=bar)
        embedded = embed_largest_faces(embedder, paths, batch_size=batch_size, progress=bar, phase="embedding probes")
        ranked, scores = [], []
        with GalleryIndex.open(Path(tmp) / "index") as index:
            for i in np.flatnonzero(embedded.ok):
                result = index.rank_identities(embedded.vectors[i], k=max(RANKS))
                ranked.append([m.identity for m in result.matches])
                scores.append([m.score for m in result.matches])
    kept = [identities[i] for i in np.flatnonzero(embedded.ok)]
    if not enrolled & set(kept) or build.vectors == 0:
        raise DatasetError(f"nothing to measure: {build.vectors} gallery faces indexed, {len(kept)} of {len(paths)} "
                           f"probes embedded, {len(enrolled & set(kept))} of their identities enrolled")
    report = identification_report(kept, ranked, scores, enrolled, thresholds=(embedder.card.default_threshold,))
    return {"model": embedder.card.name, "model_dir": str(embedder.model_dir), "aligned": embedder.aligned,
            "gallery": str(gallery),
            "probes": str(probes), "gallery_identities": len(enrolled), "gallery_faces": build.vectors,
            "gallery_skipped": len(build.skipped) + build.no_face, "probe_photos": len(paths),
            "failures": [{"path": p, "reason": r} for p, r in embedded.failures],
            "card_threshold": embedder.card.default_threshold, "identification": report.to_dict()}
