"""`facesearch embed`: a folder of photos -> an embedding shard folder (Parquet + model card), locally or on Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from facesearch.cli.options import (
    AlignedOpt,
    FaceThresholdOpt,
    JsonOpt,
    MinFaceOpt,
    emit,
    friendly_errors,
)
from facesearch.embedder.core.constants import DEFAULT_BATCH_SIZE

ENGINES = ("local", "ray")


@friendly_errors
def embed(
    directory: Annotated[Path, typer.Argument(help="Gallery folder: DIR/<identity>/*.jpg (or DIR/<identity>.jpg).")],
    out: Annotated[Path, typer.Option("--out", help="Embedding folder to write: model_card.json + *.parquet, one row per face.")],
    model: Annotated[Optional[Path], typer.Option("--model", help="Model folder made by `facesearch export` (default $FACESEARCH_MODEL, else dlib-resnet-v1).")] = None,
    faces: Annotated[str, typer.Option("--faces", help="Faces kept per photo: 'largest' or 'all'.")] = "largest",
    engine: Annotated[str, typer.Option("--engine", help="'local' (this process) or 'ray' (a Ray Data job; needs the 'distributed' extra).")] = "local",
    address: Annotated[Optional[str], typer.Option("--address", help="Ray cluster for --engine ray, e.g. ray://head:10001 (default $RAY_ADDRESS, else a local Ray instance).")] = None,
    actors: Annotated[Optional[int], typer.Option("--actors", min=1, help="--engine ray: model actors (default one per CPU of the cluster).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Photos per batch (and per model call).")] = DEFAULT_BATCH_SIZE,
    strict: Annotated[bool, typer.Option(help="Stop at the first unreadable file instead of skipping it.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace the embeddings in an existing embedding folder.")] = False,
    aligned: AlignedOpt = False,
    min_face_size: MinFaceOpt = None,
    face_threshold: FaceThresholdOpt = None,
    json_out: JsonOpt = False,
):
    """Embed a folder of faces into Parquet shards (for `build-index --from-embeddings` or your own tools)."""
    from facesearch.cli.output import format_embed_report

    if faces not in ("largest", "all"):
        raise typer.BadParameter(f"expected 'largest' or 'all', got '{faces}'", param_hint="--faces")
    if engine not in ENGINES:
        raise typer.BadParameter(f"expected one of {', '.join(ENGINES)}, got '{engine}'", param_hint="--engine")
    if engine != "ray" and (address is not None or actors is not None):
        raise typer.BadParameter("--address and --actors need --engine ray", param_hint="--engine")
    report = run_embed(directory, out=out, model=model, faces=faces, engine=engine, address=address, actors=actors,
                       batch_size=batch_size, strict=strict, overwrite=overwrite, aligned=aligned,
                       min_face_size=min_face_size, face_threshold=face_threshold, progress=not json_out)
    emit(report, json_out, format_embed_report)


def run_embed(directory: Path, *, out: Path, model: Path | None, faces: str = "largest", engine: str = "local",
              address: str | None = None, actors: int | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
              strict: bool = False, overwrite: bool = False, aligned: bool = False, min_face_size: int | None = None,
              face_threshold: float | None = None, progress: bool = True) -> dict:
    """Scan `directory` (the index's identity rule), embed its photos with `engine`, write `out`; the report."""
    from facesearch.cli.models import embedder_for
    from facesearch.cli.progress import PhaseProgress
    from facesearch.embedder.embedding_job import PhotoItem, embed_to_shards
    from facesearch.index.sync.scan import scan_folder

    scan = scan_folder(directory)
    items = [PhotoItem(f.path, f.identity, f.size, f.mtime_ns) for f in scan.files]
    embedder = embedder_for(model, aligned=aligned, min_face_size=min_face_size, face_threshold=face_threshold)
    options = {"faces": faces, "batch_size": batch_size, "strict": strict, "overwrite": overwrite}
    with PhaseProgress(enabled=progress) as bar:
        if engine == "ray":
            from facesearch.embedder.distributed import embed_to_shards_ray

            report = embed_to_shards_ray(scan.root, items, embedder, out, address=address, actors=actors,
                                         progress=bar, **options)
        else:
            report = embed_to_shards(scan.root, items, embedder, out, progress=bar, **options)
    report.ignored = scan.ignored
    return report.to_dict() | {"model_dir": str(embedder.model_dir), "aligned": embedder.aligned}
