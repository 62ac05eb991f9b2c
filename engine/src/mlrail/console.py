"""Output shared by the CLI and the library: progress lines on stderr, markdown tables on stdout
(readable in a terminal, a PR body and a GitHub job summary alike)."""

from __future__ import annotations

import sys


def progress(message: str) -> None:
    print(f"» {message}", file=sys.stderr, flush=True)


def table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(col, "")) for col in columns) + " |" for row in rows]
    return "\n".join(lines)
