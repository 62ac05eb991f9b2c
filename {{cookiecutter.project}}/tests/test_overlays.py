import copy

import pytest

from {{ cookiecutter.package }} import config, kustomize, validate
from {{ cookiecutter.package }}.config import ENVIRONMENTS

ROOT_CFG = config.load(kustomize.Path(__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def rendered():
    overlays = kustomize.overlay_dirs(ROOT_CFG.root)
    return {name: kustomize.render_documents(path) for name, path in overlays.items()}


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def test_every_environment_renders_into_its_own_namespace(rendered):
    assert set(rendered) == set(ENVIRONMENTS)
    for env, docs in rendered.items():
        namespace = f"{ROOT_CFG.project}-{env}"
        for doc in docs:
            if doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == namespace, doc["metadata"]


def test_overlays_pass_schema_and_policy(rendered):
    for env, docs in rendered.items():
        assert validate.validate_overlay(env, docs, ROOT_CFG.kubernetes_version) == []


def test_model_reference_reaches_the_inference_service(rendered):
    for docs in rendered.values():
        (model,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"] == "model"]
        (isvc,) = by_kind(docs, "InferenceService")
        assert isvc["spec"]["predictor"]["model"]["storageUri"] == model["data"]["storageUri"]
        assert isvc["metadata"]["annotations"]["mlops/model-digest"] == model["data"]["digest"]


@pytest.mark.parametrize(
    ("mutate", "rule"),
    [
        (lambda d: d["spec"]["predictor"].pop("automountServiceAccountToken"), "token-automount"),
        (lambda d: d["spec"]["predictor"]["model"]["securityContext"].pop("capabilities"), "restricted"),
        (lambda d: d["spec"]["predictor"]["model"]["resources"].pop("limits"), "resources"),
    ],
)
def test_policy_rejects_unsafe_inference_service(rendered, mutate, rule):
    docs = copy.deepcopy(rendered["production"])
    mutate(by_kind(docs, "InferenceService")[0])
    assert rule in {f.rule for f in validate.policy_findings("production", docs)}


def test_policy_rejects_latest_image_and_missing_default_deny(rendered):
    docs = copy.deepcopy(rendered["staging"])
    cron = by_kind(docs, "CronJob")[0]
    cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] = "busybox:latest"
    docs = [d for d in docs if d["metadata"]["name"] != "default-deny-all"]
    rules = {f.rule for f in validate.policy_findings("staging", docs)}
    assert {"image", "network"} <= rules


def test_schema_rejects_unknown_fields(rendered):
    docs = copy.deepcopy(rendered["sandbox"])
    by_kind(docs, "ServiceAccount")[0]["automountToken"] = False
    assert [f.rule for f in validate.schema_findings("sandbox", docs, ROOT_CFG.kubernetes_version)] == ["schema"]


def test_missing_kustomize_is_one_clear_error(monkeypatch):
    kustomize.command.cache_clear()
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv(kustomize.KUSTOMIZE_VAR, raising=False)
    with pytest.raises(kustomize.KustomizeError, match="neither `kustomize` nor `kubectl`"):
        kustomize.command()
    kustomize.command.cache_clear()
