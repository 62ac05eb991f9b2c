"""CLI commands: serving."""


def register(add) -> None:
    """Add this area's subcommands with `add(name, handler, help)`."""
