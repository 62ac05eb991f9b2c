"""CLI commands: ci — what the GitHub workflows call beyond the lifecycle, and the workflows
themselves run locally (act) and linted."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..config import ENVIRONMENTS
from ..errors import MlopsError

SUMMARY_LIMIT = 1024 * 1024  # GitHub rejects a step summary above 1 MiB
DIFF_MARKER = "mlops-overlay-diff"


def cmd_upload_pipeline(args, cfg) -> int:
    from .. import console as cli
    from ..compile import pipeline_version

    env = cfg.env(args.env)
    folder = cfg.root / args.dir
    packages = sorted(folder.glob("*.yaml"))
    if not packages:
        raise MlopsError(f"no compiled pipelines in {args.dir}: run `make compile` first")
    rows = []
    if env.backend == "local":
        # kfp.local runs the pipeline functions directly: there is no server to upload to.
        for package in packages:
            rows.append({"pipeline": package.stem, "version": pipeline_version(package)[:19], "upload": "local: none"})
        print(cli.table(rows, ["pipeline", "version", "upload"]))
        return 0
    from ..cluster import kfp_api

    client = kfp_api.KfpPipelines(env)
    version = kfp_api.version_name(kfp_api.commit_sha(cfg.root))
    for package in packages:
        cli.progress(f"{env.name}: uploading {package.name} as version {version}")
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


def cmd_sync(args, cfg) -> int:
    from .. import console as cli
    from ..cluster import sync

    env = cfg.env(args.env)
    cli.progress(f"{env.name}: syncing {env.overlay}")
    result = sync.sync(cfg, env, revision=args.revision, timeout=args.timeout)
    print(cli.table([result.__dict__], ["env", "method", "target", "revision", "detail"]))
    _github_output(served="true" if result.method != "none" else "false")
    return 0


def _github_output(**values: str) -> None:
    """Step outputs for later steps' `if:` (GITHUB_OUTPUT is set on runners and by act)."""
    target = os.environ.get("GITHUB_OUTPUT")
    if target:
        with open(target, "a") as output:
            output.writelines(f"{key}={value}\n" for key, value in values.items())


def cmd_pr_comment(args, cfg) -> int:
    from ..cluster.github import GitHubPullRequests

    path = cfg.root / args.file
    if not path.is_file():
        raise MlopsError(f"--file {args.file} does not exist: write it first (e.g. `make diff`)")
    body = path.read_text()
    comment_id, created = GitHubPullRequests("pull-request").upsert_comment(args.pr, body, args.marker)
    print(f"{'created' if created else 'updated'} comment {comment_id} on pull request #{args.pr}")
    return 0


def cmd_ci_summary(args, cfg) -> int:
    path = cfg.root / args.file
    if not path.is_file():
        raise MlopsError(f"--file {args.file} does not exist: nothing to add to the job summary")
    text = path.read_text()
    if len(text.encode()) > SUMMARY_LIMIT:
        note = f"\n\n_Truncated: the full text is {args.file} in the job's workspace._\n"
        text = text.encode()[: SUMMARY_LIMIT - len(note) - 16].decode(errors="ignore") + note
    target = os.environ.get("GITHUB_STEP_SUMMARY")
    if not target:
        print(text)
        return 0
    with open(target, "a") as summary:
        summary.write(text if text.endswith("\n") else text + "\n")
    print(f"added {args.file} to the job summary")
    return 0


def cmd_lint_workflows(args, cfg) -> int:
    from .. import console as cli, workflows

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
    inputs = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise MlopsError(f"--input {pair!r} is not of the form name=value")
        inputs[key] = value
    return inputs


def cmd_ci(args, cfg) -> int:
    from .. import console as cli, workflows

    root: Path = cfg.root
    inputs = _inputs(args.input or [])
    payload = workflows.event_payload(root, args.event, args.ref, args.base, inputs)
    if args.workflow:
        selected = [workflows.find_workflow(root, args.workflow)]
        if args.event not in selected[0].on:
            raise MlopsError(f"{selected[0].path.name} does not run on {args.event}")
    else:
        if args.event == "pull_request":
            changed = workflows.changed_files(root, payload["pull_request"]["base"]["sha"])
            ref = "main"
        elif args.event == "push":
            changed = workflows.changed_files(root, payload["before"])
            ref = args.ref
        else:
            changed, ref = None, args.ref
        selected = [w for w in workflows.workflows(root) if w.triggered_by(args.event, ref, changed)]
    if not selected:
        print(f"no workflow runs on {args.event} to {args.ref} for these changes")
        return 0
    runs = []
    for workflow in selected:
        cli.progress(f"act {args.event}: {workflow.path.name} (log: build/ci/{workflow.path.stem}-{args.event}.log)")
        runs.append(workflows.run_act(root, workflow, args.event, payload, inputs, progress=cli.progress))
    rows = [
        {"workflow": j.workflow, "job": j.job, "result": j.result, "seconds": j.seconds} for r in runs for j in r.jobs
    ]
    print(cli.table(rows, ["workflow", "job", "result", "seconds"]))
    failed = [r for r in runs if r.returncode != 0]
    for run in failed:
        print(f"error: {run.workflow.path.name} failed under act; see {run.log.relative_to(root)}", file=sys.stderr)
    return 1 if failed else 0


def register(add) -> None:
    """Add this area's subcommands with `add(name, handler, help)`."""
    sub = add("upload-pipeline", cmd_upload_pipeline, "upload the compiled pipelines as versions named by the commit")
    sub.add_argument("--env", required=True, choices=ENVIRONMENTS)
    sub.add_argument("--dir", default="build/pipelines", help="compiled pipelines (default: %(default)s)")

    sub = add("sync", cmd_sync, "sync an environment with its overlay (Argo CD, kubectl apply -k, or local)")
    sub.add_argument("--env", required=True, choices=ENVIRONMENTS)
    sub.add_argument("--revision", help="commit to sync to (default: GITHUB_SHA or HEAD)")
    sub.add_argument("--timeout", type=float, default=900.0, help="seconds to wait (default: %(default)s)")

    sub = add("pr-comment", cmd_pr_comment, "create or update the one sticky comment of a pull request")
    sub.add_argument("--pr", required=True, type=int, help="pull request number")
    sub.add_argument("--file", required=True, help="markdown file holding the comment")
    sub.add_argument("--marker", default=DIFF_MARKER, help="hidden marker naming the comment (default: %(default)s)")

    sub = add("ci-summary", cmd_ci_summary, "append a markdown file to the GitHub job summary")
    sub.add_argument("--file", required=True, help="markdown file")

    add("lint-workflows", cmd_lint_workflows, "lint .github/ with zizmor (offline), actionlint and the JSON schemas")

    sub = add("ci", cmd_ci, "run the workflows an event triggers on this machine with act (local backend)")
    sub.add_argument("--event", required=True, choices=("pull_request", "push", "workflow_dispatch"))
    sub.add_argument("--workflow", help="one workflow (file name or name:); default: every workflow the event runs")
    sub.add_argument("--ref", default="refs/heads/main", help="pushed ref (default: %(default)s)")
    sub.add_argument("--base", help="base commit (default: merge-base with main for PRs, HEAD~1 for pushes)")
    sub.add_argument("--input", action="append", help="workflow_dispatch input name=value (repeatable)")
