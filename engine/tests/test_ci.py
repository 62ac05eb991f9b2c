"""`ci`: events as GitHub sends them, which workflows an event triggers (branches, paths),
offline guards for remote actions, real act runs of small workflows, and the CI helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from example import ROOT
from mlrail import cli, workflows

SETUP_PYTHON = "actions/setup-python@5fda3b95a4ea91299a34e894583c3862153e4b97"


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture()
def repo(project_copy, monkeypatch):
    """A git repository holding the project's config, deploy tree and workflows."""
    import shutil

    monkeypatch.delenv("MLOPS_LOCAL_ROOT", raising=False)
    monkeypatch.delenv("GITHUB_REPOSITORY", raising=False)
    shutil.copytree(ROOT / ".github", project_copy / ".github")
    (project_copy / ".gitignore").write_text(".mlops/\nbuild/\n")
    git(project_copy, "init", "-q", "--initial-branch=main")
    git(project_copy, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    git(project_copy, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "initial")
    return project_copy


def commit(root: Path, path: str, text: str, message: str) -> None:
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(text)
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "add", "-A")
    git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message)


def selected(root: Path, event: str, ref: str, base: str) -> list[str]:
    changed = workflows.changed_files(root, base)
    return sorted(w.path.name for w in workflows.workflows(root) if w.triggered_by(event, ref, changed))


def production_file(root: Path) -> str:
    return next(p.name for p in (root / ".github/workflows").glob("production-*.yml"))


def test_push_to_main_runs_staging_for_code_and_production_for_a_promotion(repo):
    base = git(repo, "rev-parse", "HEAD")
    commit(repo, "src/mlrail/x.py", "x = 1\n", "code change")
    assert selected(repo, "push", "refs/heads/main", base) == ["staging.yml"]
    base = git(repo, "rev-parse", "HEAD")
    commit(repo, "deploy/overlays/production/release.yaml", "modelVersion: '2'\n", "Promote v2")
    commit(repo, "deploy/overlays/staging/release.yaml", "modelVersion: '2'\n", "Promote v2 (staging record)")
    assert selected(repo, "push", "refs/heads/main", base) == [production_file(repo)]
    base = git(repo, "rev-parse", "HEAD")
    commit(repo, "deploy/overlays/staging/release.yaml", "modelVersion: '3'\n", "staging records its release")
    assert selected(repo, "push", "refs/heads/main", base) == []  # recording a release trains nothing
    assert selected(repo, "push", "refs/heads/sandbox/new-feature", base) == ["sandbox.yml"]
    assert selected(repo, "push", "refs/heads/feature/x", base) == []
    assert selected(repo, "pull_request", "main", base) == ["pull-request.yml"]


def test_event_payloads_carry_what_the_workflows_read(repo):
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-qb", "promote/v2")
    commit(repo, "deploy/overlays/production/release.yaml", "modelVersion: '2'\n", "Promote v2")
    head = git(repo, "rev-parse", "HEAD")
    pull = workflows.event_payload(repo, "pull_request", "refs/heads/main", None, {})
    assert pull["pull_request"]["base"] == {"ref": "main", "sha": first, "repo": {"full_name": f"local/{repo.name}"}}
    assert pull["pull_request"]["head"]["sha"] == head and pull["pull_request"]["head"]["ref"] == "promote/v2"
    push = workflows.event_payload(repo, "push", "refs/heads/main", None, {})
    assert (push["before"], push["after"], push["ref"]) == (first, head, "refs/heads/main")
    dispatch = workflows.event_payload(repo, "workflow_dispatch", "refs/heads/main", None, {"action": "rollback"})
    assert dispatch["inputs"] == {"action": "rollback"}
    with pytest.raises(workflows.WorkflowError, match="event 'schedule' is not supported locally"):
        workflows.event_payload(repo, "schedule", "refs/heads/main", None, {})


def test_remote_actions_get_offline_guards_that_fail_if_ever_run(tmp_path):
    repo_ref, folder = workflows.offline_action(tmp_path, "aws-actions/configure-aws-credentials@" + "e" * 40)
    assert repo_ref == "aws-actions/configure-aws-credentials@" + "e" * 40
    action = yaml.safe_load((folder / "action.yml").read_text())
    script = action["runs"]["steps"][0]["run"]
    assert "exit 1" in script and "!env.ACT" in script
    _, nested = workflows.offline_action(tmp_path, "github/codeql-action/init@" + "f" * 40)
    assert (nested / "init" / "action.yml").is_file()


def test_unguarded_remote_actions_are_refused_before_act_starts(repo):
    path = repo / ".github/workflows/unguarded.yml"
    path.write_text(
        "on: push\npermissions: {}\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        f"      - uses: {SETUP_PYTHON}\n"
    )
    workflow = workflows.Workflow.load(path)
    assert workflows.unguarded_uses(workflow) == [f"unguarded.yml: job a: {SETUP_PYTHON}"]
    with pytest.raises(workflows.WorkflowError, match="lack the condition `!env.ACT`"):
        workflows.run_act(repo, workflow, "push", {}, {})


def test_make_targets_are_read_from_run_steps(tmp_path):
    path = tmp_path / "w.yml"
    path.write_text(
        "on: push\njobs:\n  a:\n    steps:\n"
        '      - run: make diff BASE="$BASE" && make ci-summary FILE=build/diff.md\n'
        "      - run: |\n          make -C . sync ENV=production\n          echo make-believe\n"
    )
    assert workflows.Workflow.load(path).make_targets() == ["ci-summary", "diff", "sync"]


ACT_WORKFLOW = """name: probe
on:
  push:
    branches: [main]
permissions: {}
env:
  MLOPS_BACKEND: $[[ vars.MLOPS_BACKEND || 'cluster' ]]
jobs:
  probe:
    runs-on: ubuntu-latest
    timeout-minutes: 5
    permissions:
      contents: read
    steps:
      - uses: actions/checkout@3d3c42e5aac5ba805825da76410c181273ba90b1 # v7.0.1
        with:
          persist-credentials: false
      - if: $[[ !env.ACT ]]
        uses: SETUP_PYTHON # v7.0.0
      - run: echo "backend=$MLOPS_BACKEND ref=$GITHUB_REF files=$(ls config)" > "$MLOPS_LOCAL_ROOT/probe.txt"
      - run: echo "venv=$VENV:$BOOTSTRAPPED wheels=$ENGINE_WHEELS" >> "$MLOPS_LOCAL_ROOT/probe.txt"
  after:
    needs: probe
    runs-on: ubuntu-latest
    timeout-minutes: 5
    permissions: {}
    steps:
      - run: test "$FAIL" != yes
        env:
          FAIL: $[[ github.event.head_commit.message == 'fail' && 'yes' || 'no' ]]
"""
# GitHub expressions are spelled $[[ ]] here: this file is itself a (Jinja) template.
ACT_WORKFLOW = (
    ACT_WORKFLOW.replace("$[[", "$" + "{" * 2).replace("]]", "}" * 2).replace("SETUP_PYTHON", SETUP_PYTHON, 1)
)


def test_act_runs_a_workflow_offline_with_the_local_backend(repo, monkeypatch):
    monkeypatch.setenv("ENGINE_WHEELS", str(repo / "wheels"))
    commit(repo, ".github/workflows/probe.yml", ACT_WORKFLOW, "probe")
    workflow = workflows.find_workflow(repo, "probe")
    payload = workflows.event_payload(repo, "push", "refs/heads/main", None, {})
    run = workflows.run_act(repo, workflow, "push", payload, {})
    assert run.returncode == 0, run.log.read_text()[-3000:]
    assert {job.job: job.result for job in run.jobs} == {"probe": "succeeded", "after": "succeeded"}
    probe = (repo / ".mlops" / "probe.txt").read_text()
    assert "backend=local ref=refs/heads/main files=environments.yaml" in probe
    # jobs reuse the environment running the engine (no reinstall per act workspace) and get the wheels
    assert f"venv={sys.prefix}:yes wheels={repo / 'wheels'}" in probe
    # The event reaches expressions: a commit message of `fail` fails the second job.
    commit(repo, "README.md", "x\n", "fail")
    payload = workflows.event_payload(repo, "push", "refs/heads/main", None, {})
    run = workflows.run_act(repo, workflow, "push", payload, {})
    assert run.returncode != 0 and {job.job: job.result for job in run.jobs}["after"] == "failed"


def test_ci_command_reports_jobs_and_fails_with_the_log(repo, capsys, monkeypatch):
    commit(repo, ".github/workflows/probe.yml", ACT_WORKFLOW.replace("branches: [main]", "branches: [probe]"), "x")
    monkeypatch.chdir(repo)
    assert cli.main(["ci", "--event", "push", "--workflow", "probe", "--ref", "refs/heads/probe"]) == 0
    out = capsys.readouterr().out
    assert "| probe.yml | probe | succeeded |" in out and "| probe.yml | after | succeeded |" in out
    assert cli.main(["ci", "--event", "pull_request", "--workflow", "probe"]) == 1
    assert "probe.yml does not run on pull_request" in capsys.readouterr().err


def test_ci_summary_appends_and_truncates(repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    summary = repo / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    (repo / "build").mkdir()
    (repo / "build/diff.md").write_text("## diff\n")
    assert cli.main(["ci-summary", "--file", "build/diff.md"]) == 0
    (repo / "build/big.md").write_text("x" * (2 * 1024 * 1024))
    assert cli.main(["ci-summary", "--file", "build/big.md"]) == 0
    text = summary.read_text()
    assert text.startswith("## diff\n") and "_Truncated" in text and len(text.encode()) < 1024 * 1024 + 100
    assert cli.main(["ci-summary", "--file", "build/missing.md"]) == 1
    assert "--file build/missing.md does not exist" in capsys.readouterr().err


def test_upload_pipeline_on_the_local_backend_uploads_nothing_and_says_so(repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    assert cli.main(["upload-pipeline", "--env", "staging"]) == 1
    assert "no compiled pipelines in build/pipelines: run `make compile` first" in capsys.readouterr().err
    assert cli.main(["compile"]) == 0
    capsys.readouterr()
    assert cli.main(["upload-pipeline", "--env", "staging"]) == 0
    out = capsys.readouterr().out
    assert "| features | sha256:" in out and "local: none" in out


def test_pr_comment_needs_the_file_first(repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    monkeypatch.setenv("GH_TOKEN", "t")
    monkeypatch.setenv("GITHUB_REPOSITORY", "o/r")
    assert cli.main(["pr-comment", "--pr", "3", "--file", "build/diff.md"]) == 1
    assert "write it first (e.g. `make diff`)" in capsys.readouterr().err


def test_the_image_name_target_writes_github_outputs(tmp_path):
    output = tmp_path / "out"
    env = {**os.environ, "GITHUB_OUTPUT": str(output), "GITHUB_SHA": "abc123"}
    subprocess.run(["make", "-s", "image-name"], cwd=ROOT, env=env, check=True, capture_output=True)
    lines = dict(line.split("=", 1) for line in output.read_text().splitlines())
    assert lines["tag"] == lines["name"] + ":abc123"
    assert lines["name"].endswith("/churn-classifier") and lines["registry"] == lines["name"].split("/")[0]
    json.dumps(lines)
