"""CLI commands: lifecycle — sandbox, staging, promote, production, rollback, prs, merge, status.

Each flow prints its steps as a markdown table (also the GitHub job summary's format), then what
it produced; `--json` prints the whole report instead, for scripts and the demo.
"""

from __future__ import annotations

import argparse
import json

from ..config import Config

PR_COLUMNS = ["pr", "state", "branch", "title", "files"]


def _print_report(report, as_json: bool) -> None:
    from ..console import table

    if as_json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
        return
    print(f"## {report.flow} ({report.pattern})\n")
    steps = [
        {"step": s.step, "status": s.status, "seconds": f"{s.seconds:.1f}", "detail": s.detail} for s in report.steps
    ]
    print(table(steps, ["step", "status", "seconds", "detail"]))
    if report.model:
        model = report.model
        print(f"\n### model: {model['name']} v{model['version']} in {model['env']}\n")
        metrics = [{"metric": k, "value": f"{v:.4f}"} for k, v in sorted(model["metrics"].items())]
        print(table([{"metric": "digest", "value": f"`{model['digest']}`"}, *metrics], ["metric", "value"]))
    if report.gates:
        print("\n### gates\n")
        print(table(report.gates, ["gate", "threshold", "value", "result"]))
    if report.pull_request:
        pr = report.pull_request
        print(f"\n### pull request #{pr['number']} ({pr['state']}): {pr['title']}\n")
        print(f"branch `{pr['branch']}` -> `{pr['base']}`; files: {', '.join(f'`{f}`' for f in pr['files'])}")
    if report.endpoint:
        endpoint = report.endpoint
        served = f" serves {endpoint['model_name']} v{endpoint['version']}" if "version" in endpoint else ""
        print(f"\nendpoint: {endpoint['url']}{served}")
    for note in report.notes:
        print(f"\nnote: {note}")
    timings = report.timings
    print(
        f"\ntimings: total {timings.get('total', 0):.1f}s, training {timings['training']:.1f}s, "
        f"registry {timings['registry']:.1f}s, server start-up {timings['serving']:.1f}s"
    )


def _run_flow(fn, args: argparse.Namespace, *fn_args, **fn_kwargs) -> int:
    from ..promotion import GateFailure

    try:
        report = fn(*fn_args, **fn_kwargs)
    except GateFailure as exc:
        _print_report(exc.report, args.json)
        raise
    _print_report(report, args.json)
    return 0


def cmd_sandbox(args: argparse.Namespace, cfg: Config) -> int:
    from .. import promotion
    from ..console import progress

    progress("sandbox: features, training, store, register")
    return _run_flow(promotion.run_sandbox, args, cfg, c=args.c)


def cmd_staging(args: argparse.Namespace, cfg: Config) -> int:
    from .. import promotion
    from ..console import progress

    progress("staging: compile, train, register, serve the test endpoint, smoke, gates, promotion PR")
    return _run_flow(promotion.run_staging, args, cfg, c=args.c)


def cmd_production(args: argparse.Namespace, cfg: Config) -> int:
    from .. import promotion
    from ..console import progress

    what = "retrain the promoted pipeline, " if cfg.promotion == "retrain" else "copy the promoted model, "
    progress(f"production: {what}verify, register, champion, serve")
    return _run_flow(promotion.run_production, args, cfg)


def cmd_promote(args: argparse.Namespace, cfg: Config) -> int:
    from .. import promotion

    pr, note = promotion.open_promotion(cfg, again=args.again)
    if args.json:
        print(json.dumps({"pull_request": pr.to_dict() if pr else None, "note": note}, indent=2, sort_keys=True))
    else:
        print(note)
        if pr:
            print(f"\n{pr.body}")
    return 0


def cmd_rollback(args: argparse.Namespace, cfg: Config) -> int:
    from .. import promotion

    pr, target = promotion.open_rollback(cfg)
    if args.json:
        print(json.dumps({"pull_request": pr.to_dict(), "target": target.to_data()}, indent=2, sort_keys=True))
    else:
        print(f"PR #{pr.number} {pr.branch}: {pr.title}\n\n{pr.body}")
        print(f"\nnext: merge it (`make merge PR={pr.number}` locally), then `make production`")
    return 0


def _pr_row(pr) -> dict:
    return {"pr": f"#{pr.number}", "state": pr.state, "branch": pr.branch, "title": pr.title, "files": len(pr.files)}


def cmd_prs(args: argparse.Namespace, cfg: Config) -> int:
    from .. import gitops
    from ..console import table

    pulls = gitops.pull_requests(cfg).list(args.state)
    if args.json:
        print(json.dumps([pr.to_dict() for pr in pulls], indent=2, sort_keys=True))
    elif not pulls:
        print("no pull requests yet")
    else:
        print(table([_pr_row(pr) for pr in pulls], PR_COLUMNS))
    return 0


def cmd_merge(args: argparse.Namespace, cfg: Config) -> int:
    from .. import gitops
    from ..console import progress

    if gitops.backend_name(cfg) != "local":
        raise gitops.GitOpsError("`merge` merges local pull requests only; merge on the code host instead")
    pr = gitops.pull_requests(cfg).merge(args.pr)
    progress(f"merged #{pr.number} ({pr.branch}) into {pr.base}; the checkout is fast-forwarded")
    if args.json:
        print(json.dumps(pr.to_dict(), indent=2, sort_keys=True))
    else:
        changes_production = any(path.startswith(cfg.env("production").overlay) for path in pr.files)
        print(f"#{pr.number} merged: {pr.title}")
        if changes_production:
            print("production changed on main: run `make production` (the production workflow) to converge")
    return 0


def cmd_status(args: argparse.Namespace, cfg: Config) -> int:
    from .. import gitops, promotion
    from ..console import table

    rows = promotion.environment_status(cfg)
    open_prs = gitops.pull_requests(cfg).list("open") if (cfg.root / ".git").exists() else []
    if args.json:
        print(json.dumps({"environments": rows, "open_pull_requests": [p.to_dict() for p in open_prs]}, indent=2))
        return 0
    print(f"## {cfg.project} ({cfg.promotion})\n")
    print(table(rows, ["env", "versions", "champion", "challenger", "model.yaml", "endpoint"]))
    if open_prs:
        print("\n### open pull requests\n")
        print(table([_pr_row(pr) for pr in open_prs], PR_COLUMNS))
    return 0


def register(add) -> None:
    """Add this area's subcommands with `add(name, handler, help)`."""
    sub = add("sandbox", cmd_sandbox, "train in the sandbox and register the model there (an experiment)")
    sub.add_argument("--c", type=float, help="regularisation strength (default: 1.0)")
    sub.add_argument("--json", action="store_true", help="print the flow report as JSON")

    sub = add(
        "staging",
        cmd_staging,
        "staging flow: compile, train, register, serve + smoke the test endpoint, gates, promotion PR",
    )
    sub.add_argument("--c", type=float, help="regularisation strength (default: 1.0)")
    sub.add_argument("--json", action="store_true", help="print the flow report as JSON")

    sub = add("promote", cmd_promote, "open or update the promotion PR for staging's validated challenger")
    sub.add_argument("--again", action="store_true", help="propose a candidate that was rolled back or rejected")
    sub.add_argument("--json", action="store_true", help="print the pull request as JSON")

    sub = add(
        "production",
        cmd_production,
        "production flow (on merge): converge production to main — retrain/copy, verify, register, serve",
    )
    sub.add_argument("--json", action="store_true", help="print the flow report as JSON")

    sub = add("rollback", cmd_rollback, "open a PR reverting production's model.yaml to the model served before")
    sub.add_argument("--json", action="store_true", help="print the pull request as JSON")

    sub = add("prs", cmd_prs, "list pull requests (local backend: .mlops/pulls.json)")
    sub.add_argument("--state", choices=("open", "merged", "closed"), help="only this state")
    sub.add_argument("--json", action="store_true", help="print them as JSON")

    sub = add("merge", cmd_merge, "merge a local pull request into main and fast-forward the checkout")
    sub.add_argument("--pr", type=int, required=True, help="pull request number")
    sub.add_argument("--json", action="store_true", help="print the merged pull request as JSON")

    sub = add("status", cmd_status, "per environment: registry versions, aliases, model.yaml, endpoint")
    sub.add_argument("--json", action="store_true", help="print it as JSON")
