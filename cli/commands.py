"""What each command does, as functions that return plain dicts (the --json answers).

Each one imports what it needs when called: TensorFlow only in train/export.
"""

from __future__ import annotations

import os
from pathlib import Path

from embedder.errors import ModelSpecError


def resolve_model(model: Path | None, recorded: Path | None = None) -> Path:
    """The model folder to use: --model, else $FACESEARCH_MODEL, else the one an index recorded."""
    if model is not None:
        return model
    if os.environ.get("FACESEARCH_MODEL"):
        return Path(os.environ["FACESEARCH_MODEL"])
    if recorded is not None:
        if not recorded.is_dir():
            raise ModelSpecError(f"the model this index was built with ('{recorded}') is gone: "
                                 "pass --model with the same model, or rebuild the index")
        return recorded
    raise ModelSpecError("no model given: pass --model DIR (a folder made by `facesearch export`) "
                         "or set FACESEARCH_MODEL")


def _recorded_model(index: Path) -> Path | None:
    from index import read_manifest

    if not (index / "manifest.json").is_file():
        return None
    return Path(read_manifest(index).model_dir)


def run_build_index(directory: Path, *, model: Path | None, index: Path, batch_size: int, strict: bool,
                    rebuild: bool, progress: bool) -> dict:
    """Build or update the index at `index` from `directory`; returns the build report."""
    from cli.progress import PhaseProgress
    from embedder.runtime import Embedder
    from index import build_index

    embedder = Embedder(resolve_model(model, _recorded_model(index)))
    with PhaseProgress(enabled=progress) as bar:
        report = build_index(directory, index, embedder, batch_size=batch_size, strict=strict,
                             rebuild=rebuild, progress=bar)
    return report.to_dict() | {"model": embedder.card.name, "model_dir": str(embedder.model_dir)}


def run_query(image: Path, *, index: Path, model: Path | None, k: int, threshold: float | None) -> dict:
    """Answer every face in `image` with its top-k identities and a verdict."""
    from embedder.runtime import Embedder
    from index import GalleryIndex

    with GalleryIndex.open(index) as gallery:
        embedder = Embedder(resolve_model(model, gallery.model_dir))
        gallery.check_model(embedder.card)
        crops = embedder.faces(image)
        vectors = embedder.embed([c.image for c in crops])
        faces = []
        for crop, vector in zip(crops, vectors):
            result = gallery.rank_identities(vector, k=k, threshold=threshold)
            faces.append({"box": None if crop.box is None else [float(v) for v in crop.box]} | result.to_dict())
        used_threshold = gallery.card.default_threshold if threshold is None else float(threshold)
    return {"image": str(image), "index": str(Path(index).resolve()), "model": embedder.card.name,
            "threshold": used_threshold, "faces": faces}


def run_train(data: Path, out: Path, *, preset: str, epochs: int | None, batch_size: int | None,
              input_size: str | None, seed: int | None) -> dict:
    """Train a preset on a folder dataset, with CLI flags overriding the preset."""
    import contextlib
    import dataclasses
    import sys

    from train.config import get_preset
    from train.fit import train

    overrides = {k: v for k, v in {"epochs": epochs, "batch_size": batch_size, "seed": seed}.items() if v is not None}
    if input_size is not None:
        overrides["input_height"], overrides["input_width"] = _parse_size(input_size)
    config = dataclasses.replace(get_preset(preset), **overrides)
    # Keras draws its progress bar on stdout; stdout is for results (and --json) only.
    with contextlib.redirect_stdout(sys.stderr):
        return train(data, out, config).to_dict()


def run_export(checkpoint: Path, out: Path, *, onnx: bool, savedmodel: bool, fuse_prelu: bool = False) -> dict:
    """Export a checkpoint; returns the model card and the measured parity."""
    import dataclasses

    from embedder.errors import FaceSearchError
    from embedder.export import ExportReport, export_model

    if not (onnx or savedmodel):
        raise FaceSearchError("nothing to export: --no-onnx and --no-savedmodel together leave no format")
    card = export_model(checkpoint, out, onnx=onnx, savedmodel=savedmodel, fuse_prelu=fuse_prelu)
    return {"model_dir": str(Path(out).resolve()), "card": card.to_dict(),
            "parity": dataclasses.asdict(ExportReport.load(out))}


def _parse_size(text: str) -> tuple[int, int]:
    from embedder.errors import FaceSearchError

    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise FaceSearchError(f"--input-size takes HxW such as 112x96, got '{text}'") from None
    return height, width
