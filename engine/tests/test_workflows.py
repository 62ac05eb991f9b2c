"""The repository's own .github/: zero linter findings, the security rules of the design, and
every make target / CLI command a workflow calls exists."""

from __future__ import annotations

import re
import shutil

import pytest
import yaml

from example import ROOT
from mlrail import cli, workflows

# The only commits the workflows may pin (tag -> commit read from each action's repository).
PINS = {
    "actions/checkout": ("3d3c42e5aac5ba805825da76410c181273ba90b1", "v7.0.1"),
    "actions/setup-python": ("5fda3b95a4ea91299a34e894583c3862153e4b97", "v7.0.0"),
    "actions/create-github-app-token": ("1b10c78c7865c340bc4f6099eb2f838309f1e8c3", "v3.1.1"),
    "docker/setup-buildx-action": ("37fe631027851001ddb9b187196cc803df7f5f0e", "v4.3.0"),
    "docker/login-action": ("4907a6ddec9925e35a0a9e82d7399ccc52663121", "v4.1.0"),
    "docker/build-push-action": ("53b7df96c91f9c12dcc8a07bcb9ccacbed38856a", "v7.3.0"),
    "aws-actions/configure-aws-credentials": ("e6de054238d6b7531b4efff3b6587d9aade6a06c", "v6.2.3"),
    "google-github-actions/auth": ("7c6bc770dae815cd3e89ee6cdf493a5fab2cc093", "v3.0.0"),
    "google-github-actions/get-gke-credentials": ("3da1e46a907576cefaa90c484278bb5b259dd395", "v3.0.0"),
}
WORKFLOWS = workflows.workflows(ROOT)
ENVIRONMENTS = ("sandbox", "staging", "production")
# An untrusted expression, spelled so that this file (itself a Jinja template) renders as is.
UNTRUSTED = "$" + "{" * 2 + " github.event.pull_request.title " + "}" * 2


def _docs(workflow):
    return yaml.safe_load(workflow.path.read_text())


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.path.name)
def test_top_level_permissions_are_empty_and_every_job_is_bounded(workflow):
    doc = _docs(workflow)
    assert doc["permissions"] == {}
    for job_id, job in workflow.jobs.items():
        assert "permissions" in job, f"{job_id} declares no permissions"
        assert isinstance(job.get("timeout-minutes"), int), f"{job_id} has no timeout-minutes"
        if job["permissions"].get("id-token") == "write":
            assert job.get("environment") in ENVIRONMENTS, f"{job_id}: OIDC only in jobs bound to an environment"
        assert set(job["permissions"].values()) <= {"read", "write"}


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.path.name)
def test_no_dangerous_triggers_and_one_uncancelled_group_per_environment(workflow):
    assert not {"pull_request_target", "workflow_run"} & set(workflow.on)
    doc = _docs(workflow)
    bound = {job.get("environment") for job in workflow.jobs.values()} - {None}
    # release-check only holds the PR check's read-only registry token: it deploys nothing
    assert bound <= {*ENVIRONMENTS, "release-check"}
    environments = bound & set(ENVIRONMENTS)
    if environments:
        assert len(environments) == 1, "one workflow deploys one environment"
        assert doc["concurrency"] == {"group": environments.pop(), "cancel-in-progress": False}
    if "release-check" in bound:
        release = [job for job in workflow.jobs.values() if job.get("environment") == "release-check"]
        assert [job["permissions"] for job in release] == [{"contents": "read"}], "release-check: read only"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.path.name)
def test_actions_are_pinned_to_known_commits_and_credentials_not_persisted(workflow):
    text = workflow.path.read_text()
    for job_id, step in workflow.steps():
        uses = step.get("uses")
        if not uses:
            continue
        name, _, ref = uses.partition("@")
        assert name in PINS, f"{job_id}: {name} is not a vetted action"
        sha, tag = PINS[name]
        assert ref == sha, f"{job_id}: {name} must be pinned to {sha}"
        assert re.search(rf"{re.escape(uses)} # {re.escape(tag)}\n", text), f"{name}: missing `# {tag}`"
        if name == "actions/checkout":
            assert step["with"]["persist-credentials"] is False
        else:
            assert "!env.ACT" in str(step.get("if")), f"{job_id}: {name} must be skipped under act"


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.path.name)
def test_run_steps_hold_no_expressions(workflow):
    for job_id, step in workflow.steps():
        assert "$" + "{" * 2 not in str(step.get("run", "")), f"{job_id}: pass expressions to run: through env:"


def test_pull_requests_that_must_trigger_ci_use_the_app_token():
    """Steps that open PRs get GH_TOKEN from the GitHub App: PRs opened with GITHUB_TOKEN trigger no workflow."""
    opening = re.compile(r"make (staging|promote|rollback|production)\b")
    for workflow in WORKFLOWS:
        for job_id, job in workflow.jobs.items():
            app = [
                s.get("id") for s in job["steps"] if s.get("uses", "").startswith("actions/create-github-app-token@")
            ]
            for step in job["steps"]:
                token = str((step.get("env") or {}).get("GH_TOKEN", ""))
                if opening.search(str(step.get("run", ""))) and "production" not in str(step.get("run")):
                    assert token, f"{workflow.path.name}:{job_id}: `{step['run']}` opens a PR without GH_TOKEN"
                if token and "pr-comment" not in str(step.get("run", "")):
                    assert app and f"steps.{app[0]}.outputs.token" in token, f"{workflow.path.name}:{job_id}"


def test_every_make_target_and_cli_command_a_workflow_calls_exists():
    targets = workflows.makefile_targets(ROOT / "Makefile")
    commands = set(cli.command_names())
    missing = []
    for workflow in WORKFLOWS:
        for target in workflow.make_targets():
            if target not in targets:
                missing.append(f"{workflow.path.name}: make {target}")
                continue
            missing += [
                f"{workflow.path.name}: make {target} -> CLI `{command}`"
                for command in workflows.cli_commands(targets[target])
                if command not in commands
            ]
    assert not missing, "workflows call what does not exist: " + "; ".join(missing)


def test_codeowners_guard_the_production_overlay_and_dependabot_covers_every_ecosystem():
    owners = (ROOT / ".github" / "CODEOWNERS").read_text()
    assert re.search(r"^/deploy/overlays/production/ +@\S+", owners, re.MULTILINE)
    dependabot = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    assert {u["package-ecosystem"] for u in dependabot["updates"]} == {"github-actions", "pip", "docker"}
    assert (ROOT / ".github" / "pull_request_template.md").is_file()


def test_linters_report_zero_findings():
    results = workflows.lint(ROOT)
    assert [r.linter for r in results] == ["zizmor --offline", "actionlint + shellcheck", "check-jsonschema"]
    assert {r.linter: r.findings for r in results} == {r.linter: [] for r in results}


def test_linters_catch_what_the_rules_forbid(tmp_path):
    shutil.copytree(ROOT / ".github", tmp_path / ".github")
    (tmp_path / ".github" / "workflows" / "bad.yml").write_text(
        "on: pull_request_target\n"
        "jobs:\n"
        "  bad:\n"
        "    runs-on: ubuntu-latest\n"
        "    steps:\n"
        "      - uses: actions/checkout@v4\n"
        f'      - run: echo "{UNTRUSTED}" $UNQUOTED\n'
    )
    found = {r.linter: " ".join(r.findings) for r in workflows.lint(tmp_path)}
    for audit in ("dangerous-triggers", "template-injection", "unpinned-uses", "artipacked", "excessive-permissions"):
        assert audit in found["zizmor --offline"]
    assert "SC2086" in found["actionlint + shellcheck"]
    assert not found["check-jsonschema"]  # insecure, yet valid


def test_schema_violations_are_findings(tmp_path):
    shutil.copytree(ROOT / ".github", tmp_path / ".github")
    (tmp_path / ".github" / "workflows" / "bad.yml").write_text(
        "on: push\npermissions: {}\njobs:\n  bad:\n    runs-on: ubuntu-latest\n    timeout-minutes: soon\n"
        "    steps:\n      - run: echo hi\n"
    )
    found = {r.linter: " ".join(r.findings) for r in workflows.lint(tmp_path)}
    assert "bad.yml" in found["check-jsonschema"]
    assert "bad.yml:6" in found["actionlint + shellcheck"]


def test_a_workflow_that_does_not_parse_is_a_finding_not_a_skip(tmp_path):
    shutil.copytree(ROOT / ".github", tmp_path / ".github")
    (tmp_path / ".github" / "workflows" / "broken.yml").write_text("on: push\njobs:\n  a: [\n")
    results = workflows.lint(tmp_path)
    assert all(r.findings for r in results), {r.linter: r.findings for r in results}


def test_app_tokens_name_the_app_by_client_id():
    """create-github-app-token v3.1 deprecates `app-id`; the App's Client ID is a variable, its key a secret."""
    for workflow in WORKFLOWS:
        for job_id, step in workflow.steps():
            if step.get("uses", "").startswith("actions/create-github-app-token@"):
                assert set(step["with"]) >= {"client-id", "private-key"} and "app-id" not in step["with"], job_id
                assert step["with"]["client-id"].strip() == "$" + "{" * 2 + " vars.APP_CLIENT_ID " + "}" * 2


def test_staging_and_production_compile_and_upload_only_inside_their_flow():
    """The flow compiles once (pinned to the image digest) and uploads that package: a separate
    `make compile` / `make upload-pipeline` step would compile and upload the pipelines again."""
    for workflow in WORKFLOWS:
        if not workflow.path.name.startswith(("staging", "production")):
            continue
        extra = [t for t in workflow.make_targets() if t in ("compile", "upload-pipeline")]
        assert not extra, f"{workflow.path.name} runs `make {extra[0]}` beside its flow"
