"""The generated repositories' .github/ and this template's own: zero findings from zizmor
(offline), actionlint (with shellcheck) and the GitHub JSON schemas for every variant; and,
marked deep, the generated workflows run with act for a pull request, a push to main
(staging), the promotion merge (production) and a rollback."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from mlrail import workflows
from template_support import PROJECT_TEMPLATE, ROOT, VARIANTS, generated_repo_env, load_hook, run_make


def lint(root: Path) -> dict[str, list[str]]:
    """Findings per linter for `root`/.github: the engine's own linters (`make lint-workflows`),
    tested for catching what the rules forbid in engine/tests/test_workflows.py."""
    return {result.linter: result.findings for result in workflows.lint(root)}


NO_FINDINGS = {"zizmor --offline": [], "actionlint + shellcheck": [], "check-jsonschema": []}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_generated_github_folder_has_zero_findings(variant, baked_variants):
    project = baked_variants(variant).path
    assert lint(project) == NO_FINDINGS
    names = sorted(p.name for p in (project / ".github" / "workflows").glob("*.yml"))
    promotion = VARIANTS[variant]["promotion"]
    assert names == sorted(["pull-request.yml", "sandbox.yml", "staging.yml", f"production-{promotion}.yml"])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_workflows_are_copied_verbatim(variant, baked_variants, tmp_path):
    """Workflows are not rendered (_copy_without_render): GitHub's own expressions survive; the
    post-gen hook only drops the marked regions of the options not chosen (keep_regions)."""
    baked = baked_variants(variant)
    shutil.copytree(PROJECT_TEMPLATE / ".github" / "workflows", tmp_path / ".github" / "workflows")
    hook = load_hook("post_gen_project", baked.answers)
    hook.ROOT = tmp_path
    hook.keep_regions("argocd", baked.answers["argocd"])
    hook.keep_regions("cloud", baked.answers["cloud"])
    for path in (baked.path / ".github" / "workflows").glob("*.yml"):
        assert path.read_bytes() == (tmp_path / ".github" / "workflows" / path.name).read_bytes()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pull_request_verifies_the_changed_releases(variant, baked_variants):
    """The PR check runs the production verification (`make verify-release`) on the release files a
    PR changes, as a read-only identity of its own: the `release-check` Environment's MLflow token,
    only `contents: read`, the base commit in the clone; on every PR, so that a fork's (which gets no
    secrets) cannot change a release past it."""
    project = baked_variants(variant).path
    workflow = yaml.safe_load((project / ".github" / "workflows" / "pull-request.yml").read_text())
    job = workflow["jobs"]["release"]
    assert job["environment"] == "release-check"
    assert job["permissions"] == {"contents": "read"}
    assert "if" not in job
    assert job["env"] == {
        "MLOPS_BACKEND": "${{ vars.MLOPS_BACKEND || 'cluster' }}",
        "MLFLOW_TRACKING_TOKEN": "${{ secrets.MLFLOW_TRACKING_TOKEN }}",
    }
    checkout = job["steps"][0]
    assert checkout["uses"].startswith("actions/checkout@")
    assert checkout["with"] == {"persist-credentials": False, "fetch-depth": 0}
    verify = [step for step in job["steps"] if "verify-release" in step.get("run", "")]
    assert len(verify) == 1 and verify[0]["run"] == 'make verify-release BASE="$BASE_SHA"'
    assert verify[0]["env"] == {"BASE_SHA": "${{ github.event.pull_request.base.sha }}"}
    # the verdict, verified or refused, reaches the job summary a reviewer reads
    assert job["steps"][-1] == {
        "name": "Job summary (verified, or the refusal)",
        "if": "${{ !cancelled() }}",
        "run": "make ci-summary FILE=build/release-check.md",
    }
    assert "--summary build/release-check.md" in (project / "Makefile").read_text()
    # every job that opens a registry sends its Environment's MLflow token
    for name in ("sandbox.yml", "staging.yml", f"production-{VARIANTS[variant]['promotion']}.yml"):
        flow = yaml.safe_load((project / ".github" / "workflows" / name).read_text())
        main_job = flow["jobs"][name.split(".")[0].split("-")[0]]
        assert main_job["env"]["MLFLOW_TRACKING_TOKEN"] == "${{ secrets.MLFLOW_TRACKING_TOKEN }}", name


def test_codeowners_names_the_release_owners(baked_variants):
    baked = baked_variants("custom-retrain-argocd")
    owners = (baked.path / ".github" / "CODEOWNERS").read_text()
    assert f"/deploy/overlays/production/ {baked.answers['release_owners']}" in owners


def test_template_ci_and_release_have_zero_findings():
    assert sorted(p.name for p in (ROOT / ".github" / "workflows").glob("*.yml")) == ["ci.yml", "release.yml"]
    assert lint(ROOT) == NO_FINDINGS


# --- deep: the workflows themselves, run with act on a generated repository ---------------------
# Each act job reuses the repository's own .venv (the engine's `make ci` passes VENV and
# BOOTSTRAPPED into act), so a job costs its own steps, not a fresh install.

STEP_TIMEOUT = 1500
PRODUCTION_RELEASE = "deploy/overlays/production/release.yaml"


def make(project: Path, *args: str, env: dict[str, str] | None = None) -> str:
    return run_make(project, *args, env=generated_repo_env(**(env or {})), timeout=STEP_TIMEOUT)[1]


def git(project: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=project, capture_output=True, text=True, check=True).stdout.strip()


def job_rows(output: str) -> dict[str, str]:
    """`| workflow | job | result | seconds |` rows of `make ci` -> {workflow/job: result}."""
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].endswith(".yml"):
            rows[f"{cells[0]}/{cells[1]}"] = cells[2]
    return rows


def open_pulls(project: Path) -> list[dict]:
    record = project / ".mlops" / "pulls.json"
    pulls = json.loads(record.read_text())["pulls"] if record.exists() else []
    return [pr for pr in pulls if pr["state"] == "open"]


def promote_through_act(project: Path, production: str, env: dict[str, str] | None = None) -> None:
    """A push to main runs staging (which opens the promotion PR); merging it runs production."""
    rows = job_rows(make(project, "ci", "EVENT=push", env=env))
    assert rows == {"staging.yml/image": "succeeded", "staging.yml/staging": "succeeded"}
    promotion = [pr for pr in open_pulls(project) if PRODUCTION_RELEASE in pr["files"]]
    assert len(promotion) == 1, open_pulls(project)
    make(project, "merge", f"PR={promotion[0]['number']}")
    rows = job_rows(make(project, "ci", "EVENT=push"))
    # only production's release (and staging's record of it) changed: staging does not retrain
    assert rows == {f"{production}/production": "succeeded", f"{production}/rollback": "skipped"}
    # retrain: production trained its own model and opened the deployment PR; merging it serves it
    deployments = [pr for pr in open_pulls(project) if pr["branch"].startswith("deploy/")]
    assert len(deployments) == (1 if production.endswith("retrain.yml") else 0), open_pulls(project)
    for deployment in deployments:
        make(project, "merge", f"PR={deployment['number']}")
        rows = job_rows(make(project, "ci", "EVENT=push"))
        assert rows == {f"{production}/production": "succeeded", f"{production}/rollback": "skipped"}
    assert yaml.safe_load((project / PRODUCTION_RELEASE).read_text())["data"]["modelVersion"] != "none"


def commit_note(project: Path, text: str) -> None:
    notes = project / "docs" / "team.md"
    notes.write_text((notes.read_text() if notes.exists() else "# Team notes\n") + text + "\n")
    git(project, "add", "docs/team.md")
    git(project, "-c", "user.name=dev", "-c", "user.email=dev@example.com", "commit", "-qm", text)


@pytest.mark.deep
@pytest.mark.parametrize(
    ("answers", "pull_request"),
    [
        pytest.param(
            {"promotion": "transit", "argocd": "yes"}, True, id="transit", marks=pytest.mark.xdist_group("act-transit")
        ),
        pytest.param(
            {"promotion": "retrain", "argocd": "no"}, False, id="retrain", marks=pytest.mark.xdist_group("act-retrain")
        ),
    ],
)
def test_workflows_run_with_act_through_a_whole_promotion(answers, pull_request, make_project):
    """transit: a pull request, two promotions and a rollback dispatch; retrain: one promotion
    through staging, the promotion PR, production's retrain and its deployment PR."""
    project = make_project(**answers)
    production = f"production-{answers['promotion']}.yml"
    make(project, "bootstrap")
    try:
        if pull_request:
            # A pull request: checks, overlay diff and job summary (the PR comment is skipped offline).
            git(project, "checkout", "-qb", "feature/docs")
            commit_note(project, "Pull request checks run offline")
            rows = job_rows(make(project, "ci", "EVENT=pull_request"))
            assert rows == {f"pull-request.yml/{job}": "succeeded" for job in ("checks", "diff", "release")}
            git(project, "checkout", "-q", "main")
            git(project, "merge", "-q", "--ff-only", "feature/docs")
        else:
            commit_note(project, "First model")

        # Merge to main -> staging -> promotion PR -> merge -> production (retrain: the deployment PR too).
        promote_through_act(project, production)
        # retrain's own workflow path is proven by now; the rollback job is the same in both production
        # workflows and runs here for transit (the model-swap test rolls retrain back too).
        if pull_request:
            # A second promotion, with another c, so that there is an earlier model to roll back to.
            commit_note(project, "Second model, stronger regularisation")
            promote_through_act(project, production, env={"PARAMS": "c=0.3"})
            served = (project / PRODUCTION_RELEASE).read_text()

            # Rollback (manual dispatch): one PR reverting production's release to the first model.
            before = {pr["number"] for pr in open_pulls(project)}
            dispatch = ("EVENT=workflow_dispatch", "WORKFLOW=production", "INPUTS=action=rollback")
            rows = job_rows(make(project, "ci", *dispatch))
            assert rows == {f"{production}/production": "skipped", f"{production}/rollback": "succeeded"}
            reverts = [pr for pr in open_pulls(project) if pr["number"] not in before]
            assert len(reverts) == 1 and reverts[0]["files"] == [PRODUCTION_RELEASE], reverts
            assert (project / PRODUCTION_RELEASE).read_text() == served  # only a PR, so far
    finally:
        subprocess.run(["make", "stop"], cwd=project, env=generated_repo_env(), capture_output=True, check=False)
    shutil.rmtree(project)  # a failing run keeps the tree and build/ci/*.log for inspection
