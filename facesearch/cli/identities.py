"""`facesearch verify` (are two photos the same person?) and `facesearch remove` (take someone out of an index).

Both are thin callers of the API (`facesearch.verify`, `Gallery.remove` / `remove_face`): the same
answer as a script or the service gets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from facesearch.cli.options import AlignedOpt, IndexOpt, JsonOpt, ModelOpt, emit, friendly_errors, index_dir


@friendly_errors
def verify(
    first: Annotated[Path, typer.Argument(help="A photo of a face.")],
    second: Annotated[Path, typer.Argument(help="Another photo of a face.")],
    model: ModelOpt = None,
    threshold: Annotated[Optional[float], typer.Option(help="Score at or above which the two are the same person (default: the model card's pair threshold).")] = None,
    aligned: AlignedOpt = False,
    json_out: JsonOpt = False,
):
    """Say whether the largest faces of two photos are the same person: score, threshold, verdict (exit 0 either way)."""
    import facesearch

    emit(facesearch.verify(first, second, model=model, threshold=threshold, aligned=aligned).to_dict(), json_out,
         format_verify)


@friendly_errors
def remove(
    identity: Annotated[Optional[str], typer.Argument(help="The identity to remove, every photo of it.", show_default=False)] = None,
    face: Annotated[Optional[int], typer.Option("--face", min=0, help="Remove only this stored face (an 'id' from query --json) instead of an identity.")] = None,
    photo: Annotated[Optional[str], typer.Option("--photo", help="Remove this stored photo and its faces, by its path in the index (a match's 'path' in query --json).")] = None,
    index: IndexOpt = None,
    json_out: JsonOpt = False,
):
    """Remove an identity (or one stored face, or one photo) from an index; gallery-folder photos stay out of later builds."""
    import facesearch

    if sum(x is not None for x in (identity, face, photo)) != 1:
        raise typer.BadParameter("pass one of IDENTITY, --face ID or --photo PATH", param_hint="IDENTITY")
    gallery = facesearch.open(index_dir(index, milvus=True))
    removal = (gallery.remove(identity) if identity is not None else gallery.remove_face(face) if face is not None
               else gallery.remove_photo(photo))
    emit(removal.to_dict(), json_out, format_remove)


def format_verify(answer: dict) -> str:
    verdict = "same person" if answer["same"] else "different people"
    return (f"{verdict}: score {answer['score']:.3f} {'>=' if answer['same'] else '<'} threshold "
            f"{answer['threshold']:.3f} ({answer['threshold_source']}, model {answer['model']})")


def format_remove(answer: dict) -> str:
    who = f"'{answer['identity']}'" if answer["identity"] is not None else "the face"
    text = (f"removed {who}: {answer['faces_removed']} face(s), {answer['photos_removed']} photo(s) "
            f"(generation {answer['generation']})")
    if answer["excluded"]:
        text += f"; {len(answer['excluded'])} gallery-folder photo(s) stay out of later builds"
    return text
