"""Lifecycle commands: sandbox, staging, promote, production, rollback, prs, merge, status.

Each flow prints its steps as a markdown table (also the GitHub job summary's format), then what
it produced; `--json` prints the whole report instead, for scripts and the demo.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

import typer

from ._app import JsonFlag, ParamOption, command, load_config, parameters

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


def _run_flow(fn, as_json: bool, *fn_args, **fn_kwargs) -> int:
    from ..promotion import GateFailure

    try:
        report = fn(*fn_args, **fn_kwargs)
    except GateFailure as exc:
        _print_report(exc.report, as_json)
        raise
    _print_report(report, as_json)
    return 0


@command("sandbox", "train in the sandbox and register the model there (an experiment)")
def sandbox_cmd(param: ParamOption = None, as_json: JsonFlag = False) -> int:
    from .. import promotion
    from ..console import progress

    overrides = parameters(param)
    cfg = load_config()
    progress("sandbox: features, training, store, register")
    return _run_flow(promotion.run_sandbox, as_json, cfg, overrides)


@command("staging", "staging flow: compile, train, register, serve + smoke the test endpoint, gates, promotion PR")
def staging_cmd(
    param: ParamOption = None,
    image_digest: Annotated[
        str | None,
        typer.Option(help="the pushed project image's digest (CI: the image job's output); default: the source digest"),
    ] = None,
    as_json: JsonFlag = False,
) -> int:
    from .. import promotion
    from ..console import progress

    overrides = parameters(param)
    cfg = load_config()
    progress("staging: compile, train, register, serve the test endpoint, smoke, gates, promotion PR")
    return _run_flow(promotion.run_staging, as_json, cfg, overrides, image_digest=image_digest or None)


@command(
    "production", "production flow (on merge): converge production to main — retrain/copy, verify, register, serve"
)
def production_cmd(as_json: JsonFlag = False) -> int:
    from .. import promotion
    from ..console import progress

    cfg = load_config()
    what = "retrain the promoted pipeline, " if cfg.promotion == "retrain" else "copy the promoted model, "
    progress(f"production: {what}verify, register, champion, serve")
    return _run_flow(promotion.run_production, as_json, cfg)


@command("promote", "open or update the promotion PR for staging's validated challenger")
def promote_cmd(
    again: Annotated[
        bool, typer.Option("--again", help="propose a candidate that was rolled back or rejected")
    ] = False,
    as_json: JsonFlag = False,
) -> int:
    from .. import promotion

    cfg = load_config()
    pr, note = promotion.open_promotion(cfg, again=again)
    if as_json:
        print(json.dumps({"pull_request": pr.to_dict() if pr else None, "note": note}, indent=2, sort_keys=True))
    else:
        print(note)
        if pr:
            print(f"\n{pr.body}")
    return 0


@command("rollback", "open a PR reverting production's release to the model served before")
def rollback_cmd(as_json: JsonFlag = False) -> int:
    from .. import promotion

    cfg = load_config()
    pr, target = promotion.open_rollback(cfg)
    if as_json:
        print(json.dumps({"pull_request": pr.to_dict(), "target": target.to_data()}, indent=2, sort_keys=True))
    else:
        print(f"PR #{pr.number} {pr.branch}: {pr.title}\n\n{pr.body}")
        print(f"\nnext: merge it (`make merge PR={pr.number}` locally), then `make production`")
    return 0


def _pr_row(pr) -> dict:
    return {"pr": f"#{pr.number}", "state": pr.state, "branch": pr.branch, "title": pr.title, "files": len(pr.files)}


@command("prs", "list pull requests (local backend: .mlops/pulls.json)")
def prs_cmd(
    state: Annotated[Literal["open", "merged", "closed"] | None, typer.Option(help="only this state")] = None,
    as_json: JsonFlag = False,
) -> int:
    from .. import gitops
    from ..console import table

    cfg = load_config()
    pulls = gitops.pull_requests(cfg).list(state)
    if as_json:
        print(json.dumps([pr.to_dict() for pr in pulls], indent=2, sort_keys=True))
    elif not pulls:
        print("no pull requests yet")
    else:
        print(table([_pr_row(pr) for pr in pulls], PR_COLUMNS))
    return 0


@command("merge", "merge a local pull request into main and fast-forward the checkout")
def merge_cmd(
    pr: Annotated[int, typer.Option("--pr", help="pull request number")],
    as_json: JsonFlag = False,
) -> int:
    from .. import gitops, provenance
    from ..console import progress

    cfg = load_config()
    if gitops.backend_name(cfg) != "local":
        raise gitops.GitOpsError("`merge` merges local pull requests only; merge on the code host instead")
    merged = provenance.merge(cfg, pr)  # the PR's releases are verified before anything is published
    progress(f"merged #{merged.number} ({merged.branch}) into {merged.base}; the checkout is fast-forwarded")
    if as_json:
        print(json.dumps(merged.to_dict(), indent=2, sort_keys=True))
    else:
        changes_production = any(path.startswith(cfg.env("production").overlay) for path in merged.files)
        print(f"#{merged.number} merged: {merged.title}")
        if changes_production:
            print("production changed on main: run `make production` (the production workflow) to converge")
    return 0


@command("status", "per environment: registry versions, aliases, the overlay's release, endpoint")
def status_cmd(as_json: JsonFlag = False) -> int:
    from .. import gitops, promotion
    from ..console import table

    cfg = load_config()
    rows = promotion.environment_status(cfg)
    open_prs = gitops.pull_requests(cfg).list("open") if (cfg.root / ".git").exists() else []
    if as_json:
        print(json.dumps({"environments": rows, "open_pull_requests": [p.to_dict() for p in open_prs]}, indent=2))
        return 0
    print(f"## {cfg.project} ({cfg.promotion})\n")
    # The scalar fields (env, versions, aliases, release, endpoint); the registry detail is for --json.
    columns = [key for key, value in rows[0].items() if not isinstance(value, list | dict)] if rows else ["env"]
    print(table(rows, columns))
    if open_prs:
        print("\n### open pull requests\n")
        print(table([_pr_row(pr) for pr in open_prs], PR_COLUMNS))
    return 0


@command("verify-release", "the PR check: verify the release files changed since --base (provenance, gates, registry)")
def verify_release_cmd(
    base: Annotated[str, typer.Option("--base", help="the git ref the change is compared with, e.g. origin/main")],
    head: Annotated[str, typer.Option("--head", help="the git ref checked")] = "HEAD",
    summary: Annotated[
        str | None, typer.Option("--summary", help="also write the verdict as markdown here (the job summary)")
    ] = None,
) -> int:
    from .. import provenance
    from ..fsutil import atomic_write_text
    from ..git import rev
    from .core import resolve_out

    cfg = load_config()
    checked, refusal = [], None
    try:
        checked = provenance.verify_changed(cfg, base, head)
    except provenance.ProvenanceError as exc:
        refusal = exc
    if summary:
        head_commit = rev(cfg.root, head) or head  # the summary names the commit checked, not "HEAD"
        text = provenance.check_summary(cfg, checked, base, head_commit, str(refusal) if refusal else None)
        atomic_write_text(resolve_out(cfg.root, summary), text)
    if refusal is not None:
        raise refusal
    if not checked:
        print(f"no release.yaml changed between {base} and {head}")
    for path, release in checked:
        model = "no model" if release.model.is_empty else f"{release.model.name} v{release.model.version}"
        print(f"{path}: verified ({model}, source {release.model.source}, gates {release.gates})")
    return 0


@command("recreate-registry", "create an empty local registry on purpose where its store still holds models")
def recreate_registry_cmd(
    env: Annotated[
        Literal["sandbox", "staging", "production"], typer.Option("--env", help="the environment", show_default=False)
    ],
) -> int:
    from ..registry import Registry, RegistryError

    cfg = load_config()
    environment = cfg.env(env)
    database = environment.local_dir / "registry.db"
    if environment.backend != "local":
        raise RegistryError(f"{env} runs on a cluster: its registry is the MLflow server {environment.registry_uri}")
    if database.exists():
        print(f"{database} exists; nothing to do (move it away first to re-create it)")
        return 0
    Registry(environment, cfg.model_name, recreate=True).exists()
    print(f"created an empty {env} registry {database}: rerun the flows (or promote again) to register models in it")
    return 0
