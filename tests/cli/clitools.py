"""Helpers shared by the CLI tests."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from facesearch.cli.main import app

ENROLLED = 20
STRANGERS = 20  # never enrolled: enough that a rate of them turned away means something


def invoke(*args: str):
    """Run the CLI in-process; returns the click Result (exit_code, stdout, stderr, output)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def invoke_json(*args: str) -> dict:
    """Run a command with --json, assert it succeeded and return the parsed answer."""
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)
