"""The one base class for mistakes a person can fix: the CLI prints the message (one sentence
naming the input and the expected form) and exits 1, with no traceback."""


class MlopsError(Exception):
    # The CLI's exit code for this kind of mistake (docs/cli.md lists them); subclasses refine it.
    exit_code = 1
