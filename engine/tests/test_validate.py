"""validate.py on the overlays the template renders: strict schema, CRD schemas, our policy and
checkov, for every option combination; and each rule on the manifest it exists for."""

from __future__ import annotations

import copy
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from example import TEMPLATE
from mlrail import validate

ENVIRONMENTS = ("sandbox", "staging", "production")
COMBINATIONS = [(p, a) for p in ("transit", "retrain") for a in ("yes", "no")]
DIGEST = "sha256:" + "ab" * 32
# KServe's default ClusterStorageContainer container as v0.20.0 installs it
# (charts/kserve-resources/files/common/storagecontainer.yaml): no securityContext.
KSERVE_DEFAULT_STORAGE_CONTAINER = {
    "image": "kserve/storage-initializer:v0.20.0",
    "imagePullPolicy": "IfNotPresent",
    "name": "storage-initializer",
    "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "100m", "memory": "100Mi"}},
}


@cache
def generated(promotion: str, argocd: str, out: Path) -> Path:
    from cookiecutter.main import cookiecutter

    target = out / f"{promotion}-{argocd}"
    return Path(
        cookiecutter(
            str(TEMPLATE),
            no_input=True,
            output_dir=str(target),
            extra_context={"promotion": promotion, "argocd": argocd},
        )
    )


def kustomize(directory: Path) -> str:
    result = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def documents(text: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def checkov() -> list[str]:
    found = validate.checkov_command()
    if found:
        return found
    if shutil.which("uv"):  # what the team Makefile's `make policy` runs
        return ["uv", "tool", "run", "--quiet", "--from", "checkov==3.3.30", "checkov"]
    pytest.skip("neither checkov nor uv is installed")


@pytest.fixture(scope="module")
def generated_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("combinations")


@pytest.fixture(scope="module")
def example_overlays(generated_root) -> dict[str, list[dict]]:
    root = generated("transit", "yes", generated_root)
    return {env: documents(kustomize(root / "deploy" / "overlays" / env)) for env in ENVIRONMENTS}


def find(docs: list[dict], kind: str) -> dict:
    return next(doc for doc in docs if doc["kind"] == kind)


def release(docs: list[dict]) -> dict:
    return next(doc for doc in docs if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "release")


@pytest.mark.parametrize(("promotion", "argocd"), COMBINATIONS)
def test_every_rendered_overlay_of_every_combination_has_no_finding(generated_root, promotion, argocd):
    root = generated(promotion, argocd, generated_root)
    version = yaml.safe_load((root / "config" / "environments.yaml").read_text())["kubernetes_version"]
    rendered = {env: kustomize(root / "deploy" / "overlays" / env) for env in ENVIRONMENTS}
    findings = [f for env, text in rendered.items() for f in validate.validate_overlay(env, documents(text), version)]
    if argocd == "yes":
        findings += validate.crd_findings("argocd", documents(kustomize(root / "deploy" / "argocd")))
    assert [str(f) for f in findings] == []
    assert [str(f) for f in validate.checkov_findings(rendered, checkov())] == []


def test_checkov_reports_what_the_manifests_fixed(example_overlays):
    """The CronJob as it was (uid 1000, default pull policy): checkov's findings come back."""
    docs = copy.deepcopy(example_overlays["staging"])
    cronjob = find(docs, "CronJob")
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    pod["securityContext"]["runAsUser"] = 1000
    del pod["containers"][0]["imagePullPolicy"]
    del cronjob["metadata"]["annotations"]["checkov.io/skip1"]
    found = validate.checkov_findings({"staging": yaml.safe_dump_all(docs)}, checkov())
    assert {f.rule for f in found} == {"CKV_K8S_15", "CKV_K8S_40", "CKV_K8S_43"}
    assert {f.overlay for f in found} == {"staging"}


def test_a_checkov_exception_needs_its_reason(example_overlays):
    docs = copy.deepcopy(example_overlays["sandbox"])
    find(docs, "CronJob")["metadata"]["annotations"]["checkov.io/skip1"] = "CKV_K8S_43"
    assert [f.rule for f in validate.policy_findings("sandbox", docs)] == ["exception"]


def test_crd_schema_catches_a_misspelled_field(example_overlays):
    docs = copy.deepcopy(example_overlays["production"])
    model = find(docs, "InferenceService")["spec"]["predictor"]["model"]
    model["storageURI"] = model.pop("storageUri")
    found = list(validate.crd_findings("production", docs))
    assert len(found) == 1 and found[0].rule == "crd-schema"
    assert "storageURI" in found[0].message and "spec.predictor.model" in found[0].message


def test_crd_schema_catches_a_wrong_type_and_an_unknown_api_version(example_overlays):
    docs = copy.deepcopy(example_overlays["production"])
    isvc = find(docs, "InferenceService")
    isvc["spec"]["predictor"]["minReplicas"] = "two"
    assert any("minReplicas" in f.message for f in validate.crd_findings("production", docs))
    isvc["apiVersion"] = "serving.kserve.io/v1alpha9"
    assert [f.message.split(" (")[0] for f in validate.crd_findings("production", docs)] == [
        "no vendored schema for serving.kserve.io/v1alpha9 InferenceService"
    ]


def test_argocd_schemas_catch_a_misspelled_field(generated_root):
    docs = documents(kustomize(generated("retrain", "yes", generated_root) / "deploy" / "argocd"))
    assert list(validate.crd_findings("argocd", docs)) == []
    find(docs, "Application")["spec"]["syncPolicy"]["syncOption"] = ["CreateNamespace=false"]
    assert [f.message.split(":")[0] for f in validate.crd_findings("argocd", docs)] == ["spec.syncPolicy"]


def test_the_predictor_must_have_a_read_only_root_filesystem(example_overlays):
    docs = copy.deepcopy(example_overlays["sandbox"])
    del find(docs, "InferenceService")["spec"]["predictor"]["model"]["securityContext"]["readOnlyRootFilesystem"]
    found = list(validate.policy_findings("sandbox", docs))
    assert [(f.rule, f.message.split(":")[0]) for f in found] == [("read-only-root", "container model")]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_promoted_environments_need_the_image_by_digest(example_overlays, env):
    docs = copy.deepcopy(example_overlays[env])
    container = find(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    name = container["image"].rsplit(":", 1)[0]

    def image_findings(image: str) -> list[str]:
        container["image"] = image
        return [f.message for f in validate.policy_findings(env, docs) if f.rule == "image"]

    assert image_findings(f"{name}:unreleased") == [], "the declared placeholder passes before any release"
    release(docs)["data"]["commit"] = "0" * 40
    tag_findings = image_findings(f"{name}:unreleased")
    pinned_tag = image_findings(f"{name}:1.2.3")
    assert image_findings(f"{name}@{DIGEST}") == []
    if env == "sandbox":
        assert pinned_tag == [], "sandbox may run a branch build by tag"
    else:
        assert len(tag_findings) == 1 and "by digest" in tag_findings[0] and env in tag_findings[0]
        assert len(pinned_tag) == 1, "a tag is mutable: staging and production run digests only"


def merge_patch(target: dict, patch: dict) -> dict:
    """RFC 7386 JSON merge patch, as `kubectl patch --type merge` applies it."""
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_patch(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def test_storage_initializer_meets_restricted_with_the_shipped_patch(example_overlays, generated_root):
    """KServe merges the ClusterStorageContainer's container into the injected init container
    (kserve/kserve#5373): without the patch the predictor pod violates restricted, with it not."""
    root = generated("transit", "yes", generated_root)
    patch = yaml.safe_load((root / "deploy" / "platform" / "storage-initializer-patch.yaml").read_text())
    isvc = find(example_overlays["production"], "InferenceService")
    pod_security_context = isvc["spec"]["predictor"]["securityContext"]

    def restricted(container: dict) -> list[str]:
        found = validate.container_findings(container, pod_security_context)
        return [message for rule, message in found if rule == "restricted"]

    assert restricted(KSERVE_DEFAULT_STORAGE_CONTAINER) == [
        "allowPrivilegeEscalation must be false",
        "capabilities.drop must include ALL",
    ], "the pod's runAsNonRoot and seccomp reach the init container; these two must come from KServe"
    patched = {"spec": {"container": KSERVE_DEFAULT_STORAGE_CONTAINER}}
    patched = merge_patch(patched, patch)
    assert restricted(patched["spec"]["container"]) == []
    assert restricted(patched["spec"]["container"] | {"securityContext": {}}) != []
    assert set(patch) == {"spec"} and set(patch["spec"]) == {"container"}, "a merge patch of the container only"
    assert patched["spec"]["container"]["image"] == KSERVE_DEFAULT_STORAGE_CONTAINER["image"]
    doc = (root / "docs" / "kserve-storage-initializer.md").read_text()
    assert "deploy/platform/storage-initializer-patch.yaml" in doc and "kserve/kserve#5373" in doc


def test_vendored_schemas_name_their_source():
    schemas = validate.crd_schemas()
    assert sorted(schemas) == [
        ("argoproj.io/v1alpha1", "AppProject"),
        ("argoproj.io/v1alpha1", "Application"),
        ("argoproj.io/v1alpha1", "ApplicationSet"),
        ("serving.kserve.io/v1beta1", "InferenceService"),
    ]
    assert all(" at v" in schema["$comment"] for schema in schemas.values())
