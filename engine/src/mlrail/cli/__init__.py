"""The one entry point used by make, CI and people: `mlrail <command>` (a typer app).

Each command is a thin handler over one library module (pipelines, runner, promotion, serving,
kustomize, validate, ...); library modules never import this package. Results go to stdout,
progress to stderr. Exit codes: 0 ok, 1 a user or input error (`error: <one line>`), 2 a usage
error, 3 a gate failure, 130 interrupted.
"""

from __future__ import annotations

import os
import sys

from . import ci, core, diff, lifecycle, serving  # noqa: F401 - importing them registers their commands
from ._app import EXIT_USER, app


def command_names() -> list[str]:
    """Every command name, e.g. to check that the Makefile and workflows call existing ones."""
    import typer.main

    return sorted(typer.main.get_command(app).commands)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (the console script exits with it)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        # Standalone mode: usage errors print usage (exit 2), help exits 0, and every command's
        # code (see _app.command) leaves through SystemExit.
        app(args=list(sys.argv[1:] if argv is None else argv), prog_name="mlrail", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USER)
    return 0
