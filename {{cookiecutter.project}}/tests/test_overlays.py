"""Your deploy/ tree: every overlay renders, stays in its namespace, passes the strict schema
and the security policy, and wires its release into the workloads. Whatever release a
lifecycle has recorded (none yet, or a served model), these hold."""

import pytest
from mlrail import config, kustomize, validate
from mlrail.config import ENVIRONMENTS

from conftest import ROOT

CFG = config.load(ROOT)


@pytest.fixture(scope="module")
def rendered():
    return {name: kustomize.render_documents(path) for name, path in kustomize.overlay_dirs(ROOT).items()}


def one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def test_every_environment_renders_into_its_own_namespace(rendered):
    assert set(rendered) == set(ENVIRONMENTS)
    for env, docs in rendered.items():
        namespace = CFG.env(env).namespace
        assert one(docs, "Namespace")["metadata"]["name"] == namespace
        outside = [
            f"{d['kind']}/{d['metadata']['name']}"
            for d in docs
            if d["kind"] != "Namespace" and d["metadata"].get("namespace") != namespace
        ]
        assert not outside, f"{env}: resources outside {namespace}: {outside}"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_overlay_passes_schema_and_policy(rendered, env):
    findings = validate.validate_overlay(env, rendered[env], CFG.kubernetes_version)
    assert findings == [], "\n".join(str(f) for f in findings)


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_the_release_reaches_the_workloads(rendered, env):
    docs = rendered[env]
    release = one(docs, "ConfigMap", "release")["data"]
    isvc = one(docs, "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == release["storageUri"]
    assert isvc["metadata"]["annotations"]["mlops/model-digest"] == release["modelDigest"]
    for cron in [d for d in docs if d["kind"] == "CronJob"]:
        images = {c["image"] for c in cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]}
        assert images == {release["image"]}, f"{env}: {cron['metadata']['name']} runs {images}"


def test_production_serves_with_more_replicas_than_staging(rendered):
    replicas = {env: one(rendered[env], "InferenceService")["spec"]["predictor"]["minReplicas"] for env in ENVIRONMENTS}
    assert replicas["production"] > replicas["staging"]
