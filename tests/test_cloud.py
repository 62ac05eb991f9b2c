"""The `cloud` (aws, gcp, none) and `isolation` (namespaces, clusters) inputs, over every combination
with `promotion` and `argocd`: the workflows keep only the chosen cloud's credential steps and lint
clean, the config names the cloud's buckets, gcp gets the engine's gcp extra, and every overlay and
Argo CD manifest renders and validates, with one destination per environment."""

from __future__ import annotations

import itertools
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from template_support import COOKIECUTTER_JSON, ENVIRONMENTS, generate, kustomize_build, load_hook, render_answers

CONFIG = json.loads(COOKIECUTTER_JSON.read_text())
CLOUDS = tuple(CONFIG["cloud"])
ISOLATIONS = tuple(CONFIG["isolation"])
COMBINATIONS = list(itertools.product(CLOUDS, ISOLATIONS, ("transit", "retrain"), ("yes", "no")))
MARKER = re.compile(r"#\s*\[(?:end )?[a-z]+(?::[^\]]*)?\]")
IN_CLUSTER = "https://kubernetes.default.svc"

# The actions each cloud's credential steps use (pinned in the workflows), and the ones it must not.
CLOUD_ACTIONS = {
    "aws": {"aws-actions/configure-aws-credentials"},
    "gcp": {"google-github-actions/auth", "google-github-actions/get-gke-credentials"},
    "none": set(),
}
CLOUD_ENV = {  # a name only that cloud's steps read
    "aws": "vars.AWS_ROLE_ARN",
    "gcp": "vars.GCP_WORKLOAD_IDENTITY_PROVIDER",
    "none": "secrets.S3_ACCESS_KEY_ID",
}


def _name(combo: tuple[str, str, str, str]) -> str:
    return "-".join(combo)


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory, cookiecutter_config: Path) -> dict[tuple, Path]:
    """Every combination, generated once for the module."""
    generated = {}
    for combo in COMBINATIONS:
        cloud, isolation, promotion, argocd = combo
        out = tmp_path_factory.mktemp(_name(combo))
        answers = {"cloud": cloud, "isolation": isolation, "promotion": promotion, "argocd": argocd}
        generated[combo] = generate(out, cookiecutter_config, answers)
    return generated


def _workflows(project: Path) -> dict[str, dict[str, Any]]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted((project / ".github/workflows").glob("*.yml"))}


def _steps(workflow: dict[str, Any]):
    for job_id, job in workflow["jobs"].items():
        for step in job.get("steps") or []:
            yield job_id, job, step


def _action(step: dict[str, Any]) -> str:
    return step.get("uses", "").split("@")[0]


@pytest.mark.parametrize("combo", COMBINATIONS, ids=_name)
def test_workflows_keep_only_the_chosen_cloud(projects, combo):
    cloud, _, _, argocd = combo
    project = projects[combo]
    for name, text in ((p.name, p.read_text()) for p in (project / ".github/workflows").glob("*.yml")):
        assert not MARKER.search(text), f"{name}: a region marker was left: {MARKER.search(text).group(0)}"
        for other in CLOUDS:
            if other != cloud:
                assert CLOUD_ENV[other] not in text, f"{name} ({cloud}) still reads {CLOUD_ENV[other]}"
    used, kubeconfig_steps, oidc_jobs = set(), 0, []
    for name, workflow in _workflows(project).items():
        for job_id, _job, step in _steps(workflow):
            used.add(_action(step))
            kubeconfig_steps += step.get("name", "").startswith("Cluster credentials")
            uses = step.get("uses", "")
            if uses and not uses.startswith("./") and _action(step) != "actions/checkout":
                # act runs offline: every remote action but checkout is skipped under it
                assert "!env.ACT" in str(step.get("if", "")), f"{name} {job_id}: {step.get('name')} runs under act"
        for job_id, job in workflow["jobs"].items():
            if (job.get("permissions") or {}).get("id-token") == "write":
                oidc_jobs.append(f"{name}:{job_id}")
    other_actions = set().union(*(CLOUD_ACTIONS[c] for c in CLOUDS if c != cloud))
    assert not used & other_actions, f"{cloud}: actions of another cloud: {used & other_actions}"
    wanted = {"aws-actions/configure-aws-credentials"} if cloud == "aws" else set()
    wanted |= {"google-github-actions/auth"} if cloud == "gcp" else set()
    wanted |= {"google-github-actions/get-gke-credentials"} if cloud == "gcp" and argocd == "no" else set()
    assert wanted <= used, f"{cloud}: missing {wanted - used}"
    if cloud == "none":
        assert oidc_jobs == [], f"no OIDC without a cloud provider, yet id-token: write in {oidc_jobs}"
    else:
        assert oidc_jobs, "the deploy jobs exchange an OIDC token for the environment's identity"
    # kubeconfig only where CI applies with kubectl: staging and production deploy jobs
    assert kubeconfig_steps == (2 if argocd == "no" else 0)


def test_only_jobs_with_an_environment_get_cloud_credentials(projects):
    """id-token: write is given only to jobs bound to a GitHub Environment (whose identity it is)."""
    for combo, project in projects.items():
        for name, workflow in _workflows(project).items():
            for job_id, job in workflow["jobs"].items():
                if (job.get("permissions") or {}).get("id-token") == "write":
                    assert job.get("environment") in ENVIRONMENTS, f"{_name(combo)} {name}:{job_id}"


@pytest.mark.parametrize(
    "combo",
    # isolation does not change the workflows: one isolation per (cloud, promotion, argocd)
    [c for c in COMBINATIONS if c[1] == ISOLATIONS[0]],
    ids=_name,
)
def test_workflows_lint_with_zero_findings(projects, combo):
    """zizmor --offline, actionlint + shellcheck and the GitHub schema, as `mlrail lint-workflows` runs them."""
    from mlrail.workflows import lint

    results = lint(projects[combo])
    assert [r.linter for r in results] == ["zizmor --offline", "actionlint + shellcheck", "check-jsonschema"]
    findings = {r.linter: r.findings for r in results if r.findings}
    assert findings == {}


@pytest.mark.parametrize("combo", COMBINATIONS, ids=_name)
def test_config_names_the_clouds_buckets(projects, combo):
    from mlrail.config import load

    cloud, isolation, _, _ = combo
    project = projects[combo]
    config = load(project)
    scheme = "gs" if cloud == "gcp" else "s3"
    endpoints = set()
    for env in ENVIRONMENTS:
        cluster = config.environments[env].cluster
        assert cluster.artifact_root == f"{scheme}://{config.project}-{env}-models"
        endpoints.add(cluster.kfp_endpoint)
    # one multi-user KFP for namespaces, one KFP per cluster otherwise
    assert len(endpoints) == (3 if isolation == "clusters" else 1)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_gcp_gets_the_engines_gcp_extra(projects, cloud):
    project = projects[(cloud, ISOLATIONS[0], "transit", "yes")]
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    engine = [d for d in meta["dependencies"] if d.startswith("mlrail")]
    dev = [d for d in meta["optional-dependencies"]["dev"] if d.startswith("mlrail")]
    assert len(engine) == 1 and len(dev) == 1
    dev_extras = re.fullmatch(r"mlrail\[([a-z,]+)\]==.+", dev[0]).group(1).split(",")
    if cloud == "gcp":
        assert engine[0].startswith("mlrail[gcp]=="), engine
        assert "gcp" in dev_extras
    else:
        assert engine[0].startswith("mlrail=="), engine
        assert "gcp" not in dev_extras


def _argocd_targets(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each Application spec, with the ApplicationSet's template expanded per list element."""
    targets = []
    for doc in docs:
        if doc["kind"] == "Application":
            targets.append(doc["spec"])
        elif doc["kind"] == "ApplicationSet":
            template = json.dumps(doc["spec"]["template"]["spec"])
            for generator in doc["spec"]["generators"]:
                for element in generator["list"]["elements"]:
                    text = re.sub(r"\{\{\s*\.(\w+)\s*\}\}", lambda m, e=element: e[m.group(1)], template)
                    targets.append(json.loads(text))
    return targets


@pytest.mark.parametrize("combo", [c for c in COMBINATIONS if c[3] == "yes"], ids=_name)
def test_argocd_destination_per_environment(projects, combo):
    from mlrail.validate import crd_findings

    _, isolation, _, _ = combo
    project = projects[combo]
    slug = project.name
    docs = kustomize_build(project / "deploy/argocd")
    assert list(crd_findings("argocd", docs)) == []
    destinations = {}
    for spec in _argocd_targets(docs):
        env = Path(spec["source"]["path"]).name
        destinations[env] = spec["destination"]
    assert sorted(destinations) == sorted(ENVIRONMENTS)
    for env, destination in destinations.items():
        if isolation == "clusters":
            assert destination == {"name": f"{slug}-{env}", "namespace": f"{slug}-{env}"}
        else:
            assert destination == {"server": IN_CLUSTER, "namespace": f"{slug}-{env}"}
    (appproject,) = [d for d in docs if d["kind"] == "AppProject"]
    allowed = appproject["spec"]["destinations"]
    assert sorted(allowed, key=lambda d: d["namespace"]) == sorted(destinations.values(), key=lambda d: d["namespace"])


@pytest.mark.parametrize("combo", COMBINATIONS, ids=_name)
def test_overlays_render_and_validate(projects, combo):
    from mlrail.validate import validate_overlay

    project = projects[combo]
    version = render_answers()["kubernetes_version"]
    for env in ENVIRONMENTS:
        findings = validate_overlay(env, kustomize_build(project / "deploy/overlays" / env), version)
        assert findings == [], f"{_name(combo)} {env}: {findings}"


@pytest.mark.parametrize("combo", COMBINATIONS, ids=_name)
def test_runbook_is_about_the_chosen_cloud(projects, combo):
    cloud, isolation, promotion, argocd = combo
    text = (projects[combo] / "docs/runbook.md").read_text()
    assert "{{" not in text and "{%" not in text
    foreign = {"aws": ("EKS", "IAM role"), "gcp": ("GKE", "Workload Identity"), "none": ("MinIO",)}
    for other in CLOUDS:
        if other != cloud:
            for word in foreign[other]:
                assert word not in text, f"the {cloud} runbook talks about {word}"
    for word in foreign[cloud]:
        assert word in text
    assert ("argocd cluster add" in text) == (isolation == "clusters" and argocd == "yes")
    assert "APP_PRIVATE_KEY" in text and "APP_CLIENT_ID" in text
    assert "Verified only on the cluster simulation" in text and "Not verified" in text


# --- the hooks, without generating ------------------------------------------------------------


def _hook_in(tmp_path: Path, workflow: str):
    hook = load_hook("post_gen_project")
    (tmp_path / ".github/workflows").mkdir(parents=True)
    (tmp_path / ".github/workflows/x.yml").write_text(workflow)
    hook.ROOT = tmp_path
    return hook


def test_regions_keep_the_chosen_value_and_drop_their_markers(tmp_path):
    hook = _hook_in(
        tmp_path,
        "a\n  # [cloud: aws, gcp]\n  b\n  # [argocd: no]\n  c\n  # [end argocd]\n  # [end cloud]\n"
        "  # [cloud: none]\n  d\n  # [end cloud]\ne\n",
    )
    hook.keep_regions("cloud", "gcp")
    hook.keep_regions("argocd", "yes")
    assert (tmp_path / ".github/workflows/x.yml").read_text() == "a\n  b\ne\n"


@pytest.mark.parametrize(
    "workflow, message",
    [
        ("# [cloud: aws]\n# [cloud: gcp]\n# [end cloud]\n# [end cloud]\n", "opened inside"),
        ("# [cloud: aws]\nx\n", "never closed"),
        ("x\n# [end cloud]\n", "without its opening marker"),
    ],
)
def test_a_broken_region_stops_generation_naming_the_line(tmp_path, workflow, message):
    hook = _hook_in(tmp_path, workflow)
    with pytest.raises(SystemExit) as stopped:
        hook.keep_regions("cloud", "aws")
    assert message in str(stopped.value) and "x.yml:" in str(stopped.value)


def test_template_regions_name_only_known_choices():
    """A typo in a marker (`# [cloud: gpc]`) would silently drop a step for every answer."""
    root = COOKIECUTTER_JSON.parent / "{{cookiecutter.project}}/.github/workflows"
    opened = 0
    for path in root.glob("*.yml"):
        for line in path.read_text().splitlines():
            if match := re.fullmatch(r"\s*# \[(\w+): ([^\]]+)\]\s*", line):
                option, choices = match.group(1), [c.strip() for c in match.group(2).split(",")]
                assert option in CONFIG and isinstance(CONFIG[option], list), f"{path.name}: {line.strip()}"
                assert set(choices) <= set(CONFIG[option]), f"{path.name}: {line.strip()}"
                opened += 1
    assert opened, "the template's workflows have no cloud regions"


@pytest.mark.parametrize("key, bad", [("cloud", "azure"), ("isolation", "vpc")])
def test_pre_gen_rejects_an_unknown_cloud_or_isolation(key, bad):
    hook = load_hook("pre_gen_project")
    assert hook.CHECKS[key](bad)
    assert all(not hook.CHECKS[key](good) for good in CONFIG[key])
