"""The typer application and what every command shares (options, config loading).

Kept light: building the app imports typer only, so `mlrail --help` stays fast;
each command imports the modules it drives (mlflow, kfp, mlserver, ...) when it runs.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable
from typing import Annotated, Literal

import typer

# = mlrail.config.ENVIRONMENTS (test_cli checks they agree); not imported: config pulls in pydantic.
ENVIRONMENTS = ("sandbox", "staging", "production")

EXIT_OK, EXIT_USER, EXIT_USAGE, EXIT_GATE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_PROVENANCE, EXIT_BUSY = 4, 5  # = provenance.ProvenanceError.exit_code, locking.EnvironmentBusy.exit_code
EPILOG = (
    "Exit codes: 0 ok; 1 a user or input error (one `error: ...` line on stderr, e.g. a config "
    "mistake naming file, line and key); 2 a usage error (unknown option or command); 3 a gate "
    "failed (the gate table is printed); 4 a release refused (not committed on main, not validated, "
    "registry version or digest disagreeing, or rolled back); 5 the environment is busy with another "
    "run; 130 interrupted (rerun the same command: every step resumes)."
)

app = typer.Typer(
    name="mlrail",
    help="The one entry point used by make, CI and people: `mlrail <command>`. "
    "Results go to stdout, progress to stderr.",
    epilog=EPILOG,
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help: no rich import, and the same text in CI logs
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


INTERRUPTED = "interrupted: rerun the same command; every step resumes where it stopped"


def command(name: str, help_text: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Register a command whose function returns its exit code.

    The wrapper is where user mistakes become one `error:` line and an exit code, so the app
    behaves the same under the console script, `python -m mlrail.cli` and typer's CliRunner."""

    def register(func: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(func)
        def run(*args, **kwargs) -> None:
            from ..console import progress
            from ..errors import MlopsError

            started = time.perf_counter()
            try:
                code = func(*args, **kwargs)
            except KeyboardInterrupt:
                print(INTERRUPTED, file=sys.stderr)
                raise typer.Exit(EXIT_INTERRUPTED) from None
            except MlopsError as exc:
                from ..promotion import GateFailure

                print(f"error: {exc}", file=sys.stderr)
                code = EXIT_GATE if isinstance(exc, GateFailure) else getattr(exc, "exit_code", EXIT_USER)
                raise typer.Exit(code) from None
            except OSError as exc:
                # The local state cannot be read or written (read-only .mlops, a file where a folder
                # belongs, ...): one line naming the path, not a traceback.
                print(f"error: {os_error_line(exc)}", file=sys.stderr)
                raise typer.Exit(EXIT_USER) from None
            if code:
                raise typer.Exit(code)  # typer's standalone mode would drop a returned code
            progress(f"{name} done in {time.perf_counter() - started:.1f}s")

        app.command(name, help=help_text)(run)
        return func

    return register


def os_error_line(exc: OSError) -> str:
    """`<path>: <reason>` and what to check, for an OSError that reached a command."""
    import errno

    path = exc.filename or "a file"
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return f"cannot use {path}: a file is where a folder belongs on that path; move the file away and rerun"
    if exc.errno == errno.EISDIR:
        return f"cannot use {path}: it is a folder where a file belongs; move it away and rerun"
    reason = exc.strerror or type(exc).__name__
    return (
        f"cannot use {path}: {reason}; check that the folders on that path are writable folders (not files) and rerun"
    )


def load_config():
    from .. import config

    return config.load()


EnvName = Literal["sandbox", "staging", "production"]
EnvRequired = Annotated[EnvName, typer.Option("--env", help="the environment", show_default=False)]
EnvOptional = Annotated[EnvName | None, typer.Option("--env", help="one environment (default: all)")]
JsonFlag = Annotated[bool, typer.Option("--json", help="print the result as JSON")]
ParamOption = Annotated[
    list[str] | None,
    typer.Option(
        "--param",
        metavar="NAME=VALUE",
        help="a training parameter for this run (repeatable); overrides config, cast to the type the "
        "pipeline declares (lists and dicts as JSON)",
    ),
]


def parameters(pairs: list[str] | None) -> dict[str, str]:
    from ..pipelines import parse_assignments

    return parse_assignments(pairs)
