"""`facesearch people`: group the faces of unlabelled photos into people, name, merge and move them."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from facesearch.cli.options import IndexOpt, JsonOpt, emit, friendly_errors, index_dir

people_app = typer.Typer(help="Group the faces of unlabelled photos (build-index --unlabeled) into people; "
                              "name, merge and move them.", invoke_without_command=True, no_args_is_help=False)


@people_app.callback()
@friendly_errors
def people(
    ctx: typer.Context,
    index: IndexOpt = None,
    recluster: Annotated[bool, typer.Option("--recluster", help="Group every face again (names and moved faces are kept).")] = False,
    json_out: JsonOpt = False,
):
    """List the people (largest first), grouping the faces added since the last run first."""
    if ctx.invoked_subcommand is not None:
        if recluster or json_out or index is not None:
            raise typer.BadParameter("put --index, --json and --recluster after the subcommand "
                                     f"(facesearch people {ctx.invoked_subcommand} ... --json)")
        return
    from facesearch.api import Gallery
    from facesearch.cli.output import format_people

    found = Gallery(index_dir(index)).people(recluster=recluster)
    emit(found.to_dict(), json_out, lambda d: format_people(d, found.threshold, found.grouped))


@people_app.command("name")
@friendly_errors
def name(
    person: Annotated[str, typer.Argument(help="The person, as `facesearch people` lists it (person-0001).", show_default=False)],
    identity: Annotated[str, typer.Argument(help="The name: it becomes an identity `query` answers (an existing one takes the faces in).", show_default=False)],
    index: IndexOpt = None,
    json_out: JsonOpt = False,
):
    """Name a person: its faces become an enrolled identity."""
    from facesearch.api import Gallery
    from facesearch.cli.output import format_people_change

    emit(Gallery(index_dir(index)).name(person, identity).to_dict(), json_out, format_people_change)


@people_app.command("merge")
@friendly_errors
def merge(
    person: Annotated[str, typer.Argument(help="The person that stays (person-0001).", show_default=False)],
    other: Annotated[str, typer.Argument(help="The person whose faces join it.", show_default=False)],
    index: IndexOpt = None,
    json_out: JsonOpt = False,
):
    """Put every face of OTHER into PERSON."""
    from facesearch.api import Gallery
    from facesearch.cli.output import format_people_change

    emit(Gallery(index_dir(index)).merge(person, other).to_dict(), json_out, format_people_change)


@people_app.command("move")
@friendly_errors
def move(
    face_id: Annotated[int, typer.Argument(help="The face's id (`facesearch people --json`).", show_default=False)],
    to: Annotated[Optional[str], typer.Option("--to", help="Move it into this person; without --to it leaves its person and stays alone.")] = None,
    index: IndexOpt = None,
    json_out: JsonOpt = False,
):
    """Move a face out of its person (it stays alone, also after --recluster), or into another with --to."""
    from facesearch.api import Gallery
    from facesearch.cli.output import format_people_change

    emit(Gallery(index_dir(index)).move(face_id, to).to_dict(), json_out, format_people_change)
