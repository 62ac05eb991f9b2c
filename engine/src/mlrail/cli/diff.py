"""The diff command: the reviewable overlay and pipeline diff of a pull request (overlays.py)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ._app import command, load_config
from .core import resolve_out

MIN_CHARS = 4_000  # below this not even the summary table of a small PR fits


@command("diff", "markdown diff of the affected overlays and compiled pipelines between two git refs")
def diff_cmd(
    base: Annotated[str, typer.Option(help="the pull request's base: a branch, tag or commit (origin/main)")],
    head: Annotated[str, typer.Option(help="the pull request's head")] = "HEAD",
    out: Annotated[str, typer.Option(help="markdown cut to one PR comment")] = "build/diff.md",
    full_out: Annotated[str, typer.Option(help="the whole diff, for the job summary")] = "build/diff-full.md",
    max_chars: Annotated[int, typer.Option(help="size limit of --out in characters")] = 65_000,
    full_url: Annotated[
        str | None, typer.Option(help="link to the full diff (e.g. the workflow run), used when the diff is cut")
    ] = None,
) -> int:
    from .. import overlays
    from ..console import progress
    from ..errors import MlopsError
    from ..fsutil import atomic_write_text

    if max_chars < MIN_CHARS:
        raise MlopsError(f"--max-chars {max_chars} is too small: pass at least {MIN_CHARS}")
    cfg = load_config()
    progress(f"diff {base} → {head}: finding the affected overlays")
    report = overlays.diff_refs(cfg.root, base, head, pipelines=cfg.pipelines, image=cfg.image)
    full = overlays.to_markdown(report, max_chars=None)
    comment = overlays.to_markdown(report, max_chars=max_chars, full_url=full_url)
    atomic_write_text(resolve_out(cfg.root, full_out), full)
    atomic_write_text(resolve_out(cfg.root, out), comment)
    print(comment, end="")
    rendered = ", ".join(o.name for o in report.overlays) or "none"
    progress(
        f"rendered {rendered}; {len(report.unaffected)} unaffected; wrote {out} ({len(comment):,} chars) "
        f"and {full_out} ({len(full):,} chars)"
    )
    broken = [o.name for o in report.overlays if o.status == "failed"]
    broken += [f"{p.name} pipeline" for p in report.pipelines or [] if p.status == "failed"]
    if broken:
        print(f"error: {', '.join(broken)} failed at {head} (the reasons are in {out})", file=sys.stderr)
        return 1
    return 0
