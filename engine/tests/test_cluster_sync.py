"""Environment sync: Argo CD through the Argo CD emulator of the cluster simulation (it renders
the overlay at the synced revision from a real bare repository), kubectl apply -k (a real
kubectl against an unreachable API server) and the local backend. Every wait is bounded."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time

import pytest
import requests
import yaml

from mlrail import config
from mlrail.cluster import sync
from mlrail.cluster.http import ClusterCallError, Retry, Timeouts
from mlrail.release import read_release, write_release
from sim import LocalServer, SilentServer, closed_port
from sim.argocd import Application, ArgoCdEmulator, KServeEmulator
from sim.github_api import git, seed_repository

TOKEN = "argocd-test-token"
APP = "churn-classifier-production"
FAST = Timeouts(connect_s=0.5, read_s=0.5, deadline_s=1.5)
NO_WAIT = Retry(attempts=3, backoff=0.0)

KUSTOMIZATION = """apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: churn-classifier-production
resources: [release.yaml]
"""
RELEASE = """apiVersion: v1
kind: ConfigMap
metadata: {name: release}
data: {modelVersion: "%s"}
"""
ISVC = """apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata: {name: churn-classifier}
spec:
  predictor:
    model:
      modelFormat: {name: mlflow}
      storageUri: %s
"""
OVERLAY = "deploy/overlays/production"


def commit(bare, files: dict[str, str], message: str = "change") -> str:
    """A new commit on main holding `files` on top of it (as a merged PR would)."""
    parent = git(bare, "rev-parse", "refs/heads/main")
    index = bare / "sync-test-index"
    env = {"GIT_INDEX_FILE": str(index)}
    git(bare, "read-tree", parent, env=env)
    for path, text in files.items():
        blob = git(bare, "hash-object", "-w", "--stdin", input_text=text)
        git(bare, "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}", env=env)
    tree = git(bare, "write-tree", env=env)
    index.unlink()
    ident = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    sha = git(bare, "commit-tree", tree, "-p", parent, "-m", message, env=ident)
    git(bare, "update-ref", "refs/heads/main", sha, parent)
    return sha


@pytest.fixture()
def argocd(tmp_path):
    bare = tmp_path / "origin.git"
    seed_repository(bare, {f"{OVERLAY}/kustomization.yaml": KUSTOMIZATION, f"{OVERLAY}/release.yaml": RELEASE % 1})
    apps = [
        Application(APP, OVERLAY, "churn-classifier-production"),
        Application("churn-classifier-staging", OVERLAY, "s"),
    ]
    with ArgoCdEmulator(bare, apps, KServeEmulator(tmp_path / "kserve"), tokens={TOKEN}) as emulator:
        yield emulator


def _argo(emulator, **kwargs) -> sync.ArgoCd:
    options = {"poll_seconds": 0.02, "timeouts": FAST, "retry": NO_WAIT, **kwargs}
    return sync.ArgoCd("production", emulator.url, TOKEN, **options)


def test_sync_posts_the_revision_and_waits_for_synced_and_healthy(argocd):
    first = git(argocd.bare, "rev-parse", "main")
    second = commit(argocd.bare, {f"{OVERLAY}/release.yaml": RELEASE % 2})
    result = _argo(argocd).sync(APP, first, timeout=10)
    assert (result.method, result.target, result.revision, result.detail) == ("argocd", APP, first, "Synced, Healthy")
    # rendered at the synced revision, not at main's head
    assert argocd.apps[APP].live[("ConfigMap", "churn-classifier-production", "release")]["data"] == {
        "modelVersion": "1"
    }
    _argo(argocd).sync(APP, second, timeout=10)
    assert argocd.apps[APP].live[("ConfigMap", "churn-classifier-production", "release")]["data"] == {
        "modelVersion": "2"
    }
    assert argocd.syncs == [(APP, first), (APP, second)]
    assert {token for _, _, token in argocd.requests} == {TOKEN}


def test_an_operation_in_progress_is_waited_for(argocd):
    argocd.sync_delay_s = 0.5
    head = git(argocd.bare, "rev-parse", "main")
    requests.post(
        f"{argocd.url}/api/v1/applications/{APP}/sync",
        json={"revision": head},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    ).raise_for_status()  # an auto-sync already running
    assert _argo(argocd).sync(APP, head, timeout=10).detail == "Synced, Healthy"
    posts = [path for method, path, _ in argocd.requests if method == "POST"]
    assert len(posts) >= 3 and argocd.syncs == [(APP, head), (APP, head)]


def test_a_broken_overlay_fails_the_sync_naming_the_application(argocd):
    broken = commit(argocd.bare, {f"{OVERLAY}/kustomization.yaml": KUSTOMIZATION + "resources: [missing.yaml]\n"})
    with pytest.raises(sync.SyncError) as caught:
        _argo(argocd).sync(APP, broken, timeout=10)
    message = str(caught.value)
    assert (
        f"Argo CD (production) {argocd.url} application {APP}: sync to {broken[:12]} failed: ComparisonError" in message
    )


def test_an_inference_service_that_cannot_load_is_degraded(argocd):
    files = {
        f"{OVERLAY}/kustomization.yaml": KUSTOMIZATION.replace("[release.yaml]", "[release.yaml, isvc.yaml]"),
        f"{OVERLAY}/isvc.yaml": ISVC % "gs://models/churn/3",
    }
    revision = commit(argocd.bare, files)
    with pytest.raises(sync.SyncError) as caught:
        _argo(argocd).sync(APP, revision, timeout=10)
    message = str(caught.value)
    assert f"synced to {revision[:12]} but Degraded: InferenceService/churn-classifier: storageUri 'gs://" in message
    assert "gs:// comes with sim/storage.py" in message


def test_a_sync_that_never_finishes_fails_at_the_deadline_with_the_last_status(argocd):
    argocd.sync_delay_s = 5  # the operation stays Running
    head = git(argocd.bare, "rev-parse", "main")
    began = time.monotonic()
    with pytest.raises(sync.SyncError) as caught:
        _argo(argocd).sync(APP, head, timeout=0.6)
    assert time.monotonic() - began < 1.5
    message = str(caught.value)
    assert f"application {APP}: not synced and healthy at {head[:12]} within 0.6s" in message
    assert "last seen: phase Running, sync OutOfSync, health Missing" in message
    assert "raise timeouts.ready_s in config/environments.yaml" in message


def test_an_argocd_that_never_answers_fails_within_the_deadline():
    with SilentServer() as server:
        began = time.monotonic()
        with pytest.raises(ClusterCallError) as caught:
            sync.ArgoCd("staging", server.url, TOKEN, timeouts=FAST, retry=NO_WAIT).sync(APP, "abc", timeout=30)
        assert time.monotonic() - began < 1.5  # the POST is not resent: one read timeout
    assert f"Argo CD (staging) POST {server.url}/api/v1/applications/{APP}/sync failed: timed out" in str(caught.value)


def test_status_polls_that_hang_end_at_the_wait_deadline():
    release = threading.Event()

    def route(request):
        if request.method == "POST":
            return 200, {}, {"metadata": {"name": APP}}
        release.wait(10)  # accepted, never answered in time
        return 200, {}, {}

    with LocalServer(route) as server:
        began = time.monotonic()
        with pytest.raises(sync.SyncError) as caught:
            sync.ArgoCd("staging", server.url, TOKEN, timeouts=Timeouts(0.5, 5, 30), poll_seconds=0.05).sync(
                APP, "abc123", timeout=1.5
            )
        elapsed = time.monotonic() - began
        release.set()
    assert elapsed < 2.5, elapsed
    message = str(caught.value)
    assert f"application {APP}: not synced and healthy at abc123 within 1.5s (last seen: no status:" in message
    assert "raise timeouts.ready_s in config/environments.yaml" in message


def test_an_application_the_token_may_not_sync_is_reported(argocd):
    with pytest.raises(
        ClusterCallError, match=r"Argo CD \(production\) POST .*/sandbox-app/sync answered 403: permission denied"
    ):
        _argo(argocd).sync("sandbox-app", "abc", timeout=1)
    with pytest.raises(ClusterCallError, match=r"answered 401: invalid session"):
        sync.ArgoCd("production", argocd.url, "stale", timeouts=FAST, retry=NO_WAIT).application(APP)


def test_a_session_from_a_local_account(argocd):
    argocd.accounts = {"ci": "s3cret"}
    client = sync.ArgoCd("production", argocd.url, username="ci", password="s3cret", timeouts=FAST, poll_seconds=0.02)
    head = git(argocd.bare, "rev-parse", "main")
    assert client.sync(APP, head, timeout=10).detail == "Synced, Healthy"
    with pytest.raises(ClusterCallError, match=r"POST .*/api/v1/session answered 401: Invalid username or password"):
        sync.ArgoCd("production", argocd.url, username="ci", password="wrong", timeouts=FAST)


def test_sync_of_a_cluster_environment_goes_through_argocd(argocd, monkeypatch, project_copy):
    head = git(argocd.bare, "rev-parse", "main")
    monkeypatch.setenv("MLOPS_BACKEND", "cluster")
    monkeypatch.setenv("GITHUB_SHA", head)
    monkeypatch.setenv(sync.SERVER_VAR, argocd.url)
    monkeypatch.setenv(sync.TOKEN_VAR, TOKEN)
    (project_copy / "deploy" / "argocd").mkdir(exist_ok=True)
    overlay = project_copy / "deploy/overlays/staging"
    current = read_release(overlay)
    model = dataclasses.replace(
        current.model,
        version="3",
        digest="sha256:" + "a" * 64,
        storage_uri="s3://staging/m/3",
        source=f"staging:{current.model.name}/3",
    )
    write_release(overlay, dataclasses.replace(current, model=model))
    cfg = config.load()
    result = sync.sync(cfg, cfg.env("staging"), timeout=10)
    assert result.target == "churn-classifier-staging" and argocd.syncs == [("churn-classifier-staging", head)]


def test_a_serving_environment_without_a_model_is_left_alone(project_copy, monkeypatch):
    monkeypatch.setenv("MLOPS_BACKEND", "cluster")
    monkeypatch.delenv(sync.SERVER_VAR, raising=False)  # no cluster is contacted at all
    cfg = config.load()
    result = sync.sync(cfg, cfg.env("production"))
    assert (result.method, result.detail) == ("none", "deploy/overlays/production/release.yaml declares no model yet")


def test_the_wait_defaults_to_the_configured_ready_timeout(project_copy):
    env = config.load().env("staging")
    assert sync.wait_seconds(env, None) == (env.timeouts.ready_s, "timeouts.ready_s in config/environments.yaml")
    assert sync.wait_seconds(env, 5) == (5.0, "--timeout")


def test_argocd_needs_its_server_and_token(project_copy, monkeypatch):
    monkeypatch.delenv(sync.SERVER_VAR, raising=False)
    monkeypatch.setenv("MLOPS_BACKEND", "cluster")
    with pytest.raises(sync.SyncError, match="needs ARGOCD_SERVER .* and ARGOCD_AUTH_TOKEN"):
        sync.ArgoCd.from_environment(config.load().env("staging"))


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_apply_failure_names_environment_and_api_server(project_copy, monkeypatch, tmp_path):
    server = f"https://127.0.0.1:{closed_port()}"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "test",
                "clusters": [{"name": "test", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
                "users": [{"name": "test", "user": {"token": "test"}}],
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("MLOPS_BACKEND", "cluster")
    cfg = config.load()
    env = dataclasses.replace(cfg.env("sandbox"))
    with pytest.raises(sync.SyncError) as caught:
        sync.kubectl_apply(cfg, env, "4f2a9c1e0b7d", timeout=30)
    message = str(caught.value)
    assert f"kubectl (sandbox) {server}: `kubectl apply -k deploy/overlays/sandbox` failed" in message
    assert "connection refused" in message
