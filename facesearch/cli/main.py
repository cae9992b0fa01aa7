"""The `facesearch` Typer app: every command module registered on one app; nothing else.

Command modules import their heavy dependencies (TensorFlow, ONNX Runtime, FAISS) inside the
commands, so `facesearch --help` stays fast and `facesearch query` never imports TensorFlow.
"""

from __future__ import annotations

import os
import sys

import typer

from facesearch.cli import (
    calibration,
    compact,
    demo,
    embeddings,
    evaluate,
    gallery,
    identities,
    models,
    people,
    serve,
    training,
)

app = typer.Typer(
    help="Face search: train an embedder, export it, index a gallery of faces, query it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.command()(training.train)
app.command()(training.prepare)
app.command()(training.export)
app.command("build-index")(gallery.build_index)
app.command()(gallery.query)
app.command()(identities.verify)
app.command()(identities.remove)
app.command()(calibration.calibrate)
app.command()(embeddings.embed)
app.command()(gallery.detect)
app.command()(compact.compact)
app.command()(demo.demo)
app.command()(serve.serve)
app.add_typer(evaluate.eval_app, name="eval")
app.add_typer(models.models_app, name="models")
app.add_typer(people.people_app, name="people")


def main() -> None:
    """Console-script entry point."""
    # OpenMP threads that spin while idle (the default) starve the other work of a 2-core machine:
    # single FAISS queries ran at 20 ms instead of 0.5 ms beside a busy process. Read once, when
    # FAISS (imported by the commands that need it) starts its OpenMP runtime.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app()


if __name__ == "__main__":
    sys.exit(main())
