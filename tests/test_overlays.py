"""Every overlay of every generated variant renders with kustomize and stays in its namespace."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from template_support import CLUSTER_SCOPED, ENVIRONMENTS, kustomize_argv, kustomize_build, load_hook

pytestmark = pytest.mark.skipif(
    kustomize_argv() is None,
    reason="neither `kustomize` nor `kubectl` is on PATH: overlays cannot be rendered on this machine",
)


def overlay_dirs(project: Path) -> list[Path]:
    return sorted(path.parent for path in (project / "deploy/overlays").glob("*/kustomization.yaml"))


def namespace_problems(docs: list[dict[str, Any]], namespace: str) -> list[str]:
    problems = []
    for doc in docs:
        kind, meta = doc.get("kind"), doc.get("metadata", {})
        label = f"{kind}/{meta.get('name')}"
        if kind == "Namespace":
            if meta.get("name") != namespace:
                problems.append(f"{label}: a Namespace other than {namespace}")
        elif kind not in CLUSTER_SCOPED and meta.get("namespace") != namespace:
            problems.append(f"{label} is in namespace {meta.get('namespace')!r}")
        for subject in doc.get("subjects", []) if kind in ("RoleBinding", "ClusterRoleBinding") else []:
            if subject.get("kind") == "ServiceAccount" and subject.get("namespace") != namespace:
                problems.append(f"{label} binds a ServiceAccount of namespace {subject.get('namespace')!r}")
    return problems


GO_FIELD = re.compile(r"\{\{-?\s*\.([A-Za-z_][A-Za-z0-9_]*)\s*-?\}\}")


def expand(value: Any, element: dict[str, Any]) -> Any:
    """An ApplicationSet template with one list element's `{{ .key }}` fields filled in."""
    if isinstance(value, dict):
        return {key: expand(item, element) for key, item in value.items()}
    if isinstance(value, list):
        return [expand(item, element) for item in value]
    if isinstance(value, str):
        return GO_FIELD.sub(lambda match: str(element[match.group(1)]), value)
    return value


def test_every_environment_has_an_overlay(baked):
    assert [path.name for path in overlay_dirs(baked.path)] == sorted(ENVIRONMENTS)


def test_overlays_render_into_their_own_namespace(baked):
    project = baked.answers["project"]
    for overlay in overlay_dirs(baked.path):
        namespace = f"{project}-{overlay.name}"
        docs = kustomize_build(overlay)
        kinds = [doc["kind"] for doc in docs]
        assert kinds.count("Namespace") == 1, f"{overlay.name}: exactly one Namespace, got {kinds}"
        for required in ("InferenceService", "CronJob", "ServiceAccount", "NetworkPolicy"):
            assert required in kinds, f"{overlay.name}: no {required} rendered"
        problems = namespace_problems(docs, namespace)
        assert not problems, f"{baked.name} overlay {overlay.name}:\n" + "\n".join(problems)
        others = [f"{project}-{env}" for env in ENVIRONMENTS if env != overlay.name]
        leaks = [f"{doc['kind']}/{doc['metadata']['name']}" for doc in docs if any(o in str(doc) for o in others)]
        assert not leaks, f"{overlay.name} names another environment's namespace in {leaks}"


def test_argocd_applications_point_at_existing_overlays(baked):
    """Every Application (and every ApplicationSet element) syncs one overlay into its namespace."""
    if baked.answers["argocd"] == "no":
        assert not (baked.path / "deploy/argocd").exists()
        return
    project = baked.answers["project"]
    docs = kustomize_build(baked.path / "deploy/argocd")
    targets = []
    for doc in docs:
        if doc["kind"] == "Application":
            targets.append(doc["spec"])
        elif doc["kind"] == "ApplicationSet":
            for generator in doc["spec"]["generators"]:
                for element in generator.get("list", {}).get("elements", []):
                    targets.append(expand(doc["spec"]["template"]["spec"], element))
    assert targets, "deploy/argocd defines no Application"
    synced = set()
    for spec in targets:
        path = spec["source"]["path"]
        env = Path(path).name
        assert (baked.path / path / "kustomization.yaml").is_file(), f"Argo CD syncs a missing overlay {path}"
        assert spec["destination"]["namespace"] == f"{project}-{env}", spec["destination"]
        assert spec["project"] == project
        synced.add(env)
    assert synced == set(ENVIRONMENTS), f"environments without an Argo CD application: {set(ENVIRONMENTS) - synced}"


def test_longest_project_name_fits_every_kubernetes_limit(make_project):
    """At the longest project the hook accepts, every derived name still fits: object names and
    label values 63 characters, CronJob names 52 (the Job controller appends 11)."""
    longest = load_hook("pre_gen_project").MAX_PROJECT
    project = make_project(project="p" * longest, package="pkg_longest")
    problems = []
    for overlay in overlay_dirs(project):
        for doc in kustomize_build(overlay):
            name = doc["metadata"]["name"]
            limit = 52 if doc["kind"] == "CronJob" else 63
            if len(name) > limit:
                problems.append(f"{overlay.name}: {doc['kind']} name {name!r} is {len(name)} > {limit}")
            for key, value in (doc["metadata"].get("labels") or {}).items():
                if len(str(value)) > 63:
                    problems.append(f"{overlay.name}: {doc['kind']}/{name} label {key} is {len(str(value))} > 63")
    assert not problems, f"project of {longest} characters:\n" + "\n".join(problems)
