"""CLI commands: diff, the reviewable overlay and pipeline diff of a pull request (overlays.py)."""

from __future__ import annotations

import argparse
import sys

from ..errors import MlopsError

MIN_CHARS = 4_000  # below this not even the summary table of a small PR fits


def register(add) -> None:
    """Add this area's subcommands with `add(name, handler, help)`."""
    sub = add("diff", cmd_diff, "markdown diff of the affected overlays and compiled pipelines between two git refs")
    sub.add_argument("--base", required=True, help="the pull request's base: a branch, tag or commit (origin/main)")
    sub.add_argument("--head", default="HEAD", help="the pull request's head (default: %(default)s)")
    sub.add_argument("--out", default="build/diff.md", help="markdown cut to one PR comment (default: %(default)s)")
    sub.add_argument(
        "--full-out", default="build/diff-full.md", help="the whole diff, for the job summary (default: %(default)s)"
    )
    sub.add_argument(
        "--max-chars", type=int, default=65_000, help="size limit of --out in characters (default: %(default)s)"
    )
    sub.add_argument("--full-url", help="link to the full diff (e.g. the workflow run), used when the diff is cut")


def cmd_diff(args: argparse.Namespace, cfg) -> int:
    from .. import overlays
    from ..console import progress
    from ..fsutil import atomic_write_text

    if args.max_chars < MIN_CHARS:
        raise MlopsError(f"--max-chars {args.max_chars} is too small: pass at least {MIN_CHARS}")
    progress(f"diff {args.base} → {args.head}: finding the affected overlays")
    report = overlays.diff_refs(cfg.root, args.base, args.head, pipelines=cfg.pipelines)
    full = overlays.to_markdown(report, max_chars=None)
    comment = overlays.to_markdown(report, max_chars=args.max_chars, full_url=args.full_url)
    atomic_write_text(cfg.root / args.full_out, full)
    atomic_write_text(cfg.root / args.out, comment)
    print(comment, end="")
    rendered = ", ".join(o.name for o in report.overlays) or "none"
    progress(
        f"rendered {rendered}; {len(report.unaffected)} unaffected; wrote {args.out} ({len(comment):,} chars) "
        f"and {args.full_out} ({len(full):,} chars)"
    )
    broken = [o.name for o in report.overlays if o.status == "failed"]
    broken += [f"{p.name} pipeline" for p in report.pipelines or [] if p.status == "failed"]
    if broken:
        print(f"error: {', '.join(broken)} failed at {args.head} (the reasons are in {args.out})", file=sys.stderr)
        return 1
    return 0
