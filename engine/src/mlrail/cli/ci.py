"""CI commands: what the GitHub workflows call beyond the lifecycle, and the workflows
themselves run locally (act) and linted.

GITHUB_OUTPUT, GITHUB_STEP_SUMMARY and GITHUB_SHA are inputs GitHub Actions (and act) set for a
step; they are read here, at the edge, and passed down as arguments.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from ._app import EnvRequired, command, load_config
from .core import resolve_out, shown

SUMMARY_LIMIT = 1024 * 1024  # GitHub rejects a step summary above 1 MiB
DIFF_MARKER = "mlops-overlay-diff"


@command("upload-pipeline", "upload the compiled pipelines as versions named by the commit")
def upload_pipeline_cmd(
    env: EnvRequired,
    dir: Annotated[str, typer.Option("--dir", help="compiled pipelines")] = "build/pipelines",
) -> int:
    from .. import console as cli
    from ..compile import pipeline_version
    from ..errors import MlopsError

    cfg = load_config()
    environment = cfg.env(env)
    folder = resolve_out(cfg.root, dir)
    packages = sorted(folder.glob("*.yaml"))
    if not packages:
        raise MlopsError(f"no compiled pipelines in {dir}: run `make compile` first")
    rows = []
    if environment.backend == "local":
        # kfp.local runs the pipeline functions directly: there is no server to upload to.
        for package in packages:
            rows.append({"pipeline": package.stem, "version": pipeline_version(package)[:19], "upload": "local: none"})
        print(cli.table(rows, ["pipeline", "version", "upload"]))
        return 0
    from ..cluster import kfp_api

    client = kfp_api.KfpPipelines(environment)
    version = kfp_api.version_name(kfp_api.commit_sha(cfg.root))
    for package in packages:
        cli.progress(f"{environment.name}: uploading {package.name} as version {version}")
        uploaded = client.upload(package, version)
        rows.append(
            {
                "pipeline": uploaded.pipeline_name,
                "version": uploaded.version_name,
                "content": uploaded.content[:19],
                "upload": "created" if uploaded.created else "exists",
            }
        )
    print(cli.table(rows, ["pipeline", "version", "content", "upload"]))
    return 0


@command("sync", "sync an environment with its overlay (Argo CD, kubectl apply -k, or local)")
def sync_cmd(
    env: EnvRequired,
    revision: Annotated[str | None, typer.Option(help="commit to sync to (default: GITHUB_SHA or HEAD)")] = None,
    timeout: Annotated[
        float | None, typer.Option(min=1, help="seconds to wait (default: timeouts.ready_s in config)")
    ] = None,
) -> int:
    from .. import console as cli
    from ..cluster import sync

    cfg = load_config()
    environment = cfg.env(env)
    cli.progress(f"{environment.name}: syncing {environment.overlay}")
    result = sync.sync(cfg, environment, revision=revision or os.environ.get("GITHUB_SHA") or None, timeout=timeout)
    print(cli.table([result.__dict__], ["env", "method", "target", "revision", "detail"]))
    # `url`: the synced InferenceService's status.url, what `smoke --url` tests next
    _github_output(served="true" if result.method != "none" else "false", url=result.url)
    return 0


def _github_output(**values: str) -> None:
    """Step outputs for later steps' `if:` (GITHUB_OUTPUT is set on runners and by act)."""
    target = os.environ.get("GITHUB_OUTPUT")
    if target:
        with open(target, "a") as output:
            output.writelines(f"{key}={value}\n" for key, value in values.items())


@command("pr-comment", "create or update the one sticky comment of a pull request")
def pr_comment_cmd(
    pr: Annotated[int, typer.Option("--pr", help="pull request number")],
    file: Annotated[str, typer.Option("--file", help="markdown file holding the comment")],
    marker: Annotated[str, typer.Option(help="hidden marker naming the comment")] = DIFF_MARKER,
) -> int:
    from ..cluster.github import GitHubPullRequests
    from ..cluster.http import Timeouts
    from ..errors import MlopsError

    cfg = load_config()
    path = resolve_out(cfg.root, file)
    if not path.is_file():
        raise MlopsError(f"--file {file} does not exist: write it first (e.g. `make diff`)")
    body = path.read_text()
    comment_id, created = GitHubPullRequests("pull-request", timeouts=Timeouts.of(cfg)).upsert_comment(pr, body, marker)
    print(f"{'created' if created else 'updated'} comment {comment_id} on pull request #{pr}")
    return 0


@command("ci-summary", "append a markdown file to the GitHub job summary")
def ci_summary_cmd(file: Annotated[str, typer.Option("--file", help="markdown file")]) -> int:
    from ..errors import MlopsError

    cfg = load_config()
    path = resolve_out(cfg.root, file)
    if not path.is_file():
        raise MlopsError(f"--file {file} does not exist: nothing to add to the job summary")
    text = path.read_text()
    if len(text.encode()) > SUMMARY_LIMIT:
        note = f"\n\n_Truncated: the full text is {file} in the job's workspace._\n"
        text = text.encode()[: SUMMARY_LIMIT - len(note) - 16].decode(errors="ignore") + note
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        print(text)
        return 0
    with open(target, "a") as summary:
        summary.write(text if text.endswith("\n") else text + "\n")
    print(f"added {file} to the job summary")
    return 0


@command("lint-workflows", "lint .github/ with zizmor (offline), actionlint and the JSON schemas")
def lint_workflows_cmd() -> int:
    from .. import console as cli
    from .. import workflows

    cfg = load_config()
    results = workflows.lint(cfg.root)
    rows = [{"linter": r.linter, "files": r.files, "findings": len(r.findings)} for r in results]
    print(cli.table(rows, ["linter", "files", "findings"]))
    findings = [f"{r.linter}: {finding}" for r in results for finding in r.findings]
    for finding in findings:
        print(f"  ✗ {finding}")
    if findings:
        print(f"error: {len(findings)} finding(s) in .github/", file=sys.stderr)
        return 1
    return 0


def _inputs(pairs: list[str]) -> dict[str, str]:
    from ..errors import MlopsError

    inputs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MlopsError(f"--input {pair!r} is not of the form name=value")
        inputs[key] = value
    return inputs


@command("ci", "run the workflows an event triggers on this machine with act (local backend)")
def ci_cmd(
    event: Annotated[Literal["pull_request", "push", "workflow_dispatch"], typer.Option(help="the GitHub event")],
    workflow: Annotated[
        str | None, typer.Option(help="one workflow (file name or name:); default: every workflow the event runs")
    ] = None,
    ref: Annotated[str, typer.Option(help="pushed ref")] = "refs/heads/main",
    base: Annotated[
        str | None, typer.Option(help="base commit (default: merge-base with main for PRs, HEAD~1 for pushes)")
    ] = None,
    input: Annotated[
        list[str] | None, typer.Option("--input", metavar="NAME=VALUE", help="workflow_dispatch input (repeatable)")
    ] = None,
) -> int:
    from .. import console as cli
    from .. import workflows
    from ..errors import MlopsError

    cfg = load_config()
    root: Path = cfg.root
    inputs = _inputs(input or [])
    payload = workflows.event_payload(root, event, ref, base, inputs)
    if workflow:
        selected = [workflows.find_workflow(root, workflow)]
        if event not in selected[0].on:
            raise MlopsError(f"{selected[0].path.name} does not run on {event}")
    else:
        if event == "pull_request":
            changed = workflows.changed_files(root, payload["pull_request"]["base"]["sha"])
            branch = "main"
        elif event == "push":
            changed = workflows.changed_files(root, payload["before"])
            branch = ref
        else:
            changed, branch = None, ref
        selected = [w for w in workflows.workflows(root) if w.triggered_by(event, branch, changed)]
    if not selected:
        print(f"no workflow runs on {event} to {ref} for these changes")
        return 0
    runs = []
    for chosen in selected:
        cli.progress(f"act {event}: {chosen.path.name} (log: build/ci/{chosen.path.stem}-{event}.log)")
        runs.append(workflows.run_act(root, chosen, event, payload, inputs, progress=cli.progress))
    rows = [
        {"workflow": j.workflow, "job": j.job, "result": j.result, "seconds": j.seconds} for r in runs for j in r.jobs
    ]
    print(cli.table(rows, ["workflow", "job", "result", "seconds"]))
    failed = [r for r in runs if r.returncode != 0]
    for run in failed:
        print(f"error: {run.workflow.path.name} failed under act; see {shown(root, run.log)}", file=sys.stderr)
    return 1 if failed else 0
