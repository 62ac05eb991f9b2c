"""CLI command groups beyond the core ones in cli.py, one module per area.

Each module exposes `register(add)`, where `add(name, handler, help) -> ArgumentParser` adds a
subcommand whose `handler(args, cfg) -> int` runs it. Keep heavy imports (mlflow, kfp,
mlserver) inside the handlers: building the parser must stay fast.
"""

AREAS = ("serving", "lifecycle", "diff", "ci")
