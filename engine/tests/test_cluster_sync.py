"""Environment sync: Argo CD's REST API (a local server answering as argocd-server does),
kubectl apply -k (a real kubectl against an unreachable API server) and the local backend."""

from __future__ import annotations

import dataclasses
import re
import shutil

import pytest
import yaml

from mlrail import config
from mlrail.cluster import sync
from mlrail.cluster.http import ClusterCallError
from test_cluster_http import NO_WAIT, LocalServer, closed_port

REVISION = "4f2a9c1e0b7d6a5c3e2f1a0b9c8d7e6f5a4b3c2d"
TOKEN = "argocd-test-token"


class FakeArgoCd:
    """Applications whose sync operation runs for `steps` polls, then ends with `phase`/`health`."""

    def __init__(self, phase: str = "Succeeded", health: str = "Healthy", steps: int = 2, busy: int = 0):
        self.apps: dict[str, dict] = {}
        self.phase, self.health, self.steps, self.busy = phase, health, steps, busy
        self.sync_requests: list[dict] = []

    def route(self, request):
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return 401, {}, {"error": "invalid session", "code": 16, "message": "invalid session"}
        match = re.fullmatch(r"/api/v1/applications/([^/]+)(/sync)?", request.path)
        if not match:
            return 404, {}, {"code": 5, "message": "not found"}
        name = match[1]
        if name not in ("churn-classifier-staging", "churn-classifier-production"):
            return 403, {}, {"code": 7, "message": "permission denied"}
        app = self.apps.setdefault(name, {"polls": 0, "operation": None})
        if match[2] and request.method == "POST":
            if self.busy:
                self.busy -= 1
                return 400, {}, {"code": 9, "message": "another operation is already in progress"}
            self.sync_requests.append(request.json())
            app.update(polls=0, operation={"revision": request.json()["revision"]})
            return 200, {}, {"metadata": {"name": name}}
        app["polls"] += 1
        status = {"sync": {"status": "OutOfSync"}, "health": {"status": "Progressing"}}
        if app["operation"]:
            done = app["polls"] >= self.steps
            status["operationState"] = {
                "phase": self.phase if done else "Running",
                "message": "one or more objects failed to apply" if self.phase == "Failed" else "successfully synced",
                "syncResult": {"revision": app["operation"]["revision"]},
            }
            if done and self.phase == "Succeeded":
                status["sync"] = {"status": "Synced", "revision": app["operation"]["revision"]}
                status["health"] = {"status": self.health}
                status["resources"] = [
                    {
                        "kind": "InferenceService",
                        "name": "churn-classifier",
                        "health": {"status": self.health, "message": "RevisionMissing: image pull backoff"},
                    }
                ]
        return 200, {}, {"metadata": {"name": name}, "status": status}


@pytest.fixture()
def argocd(monkeypatch, project_copy):
    fake = FakeArgoCd()
    with LocalServer(fake.route) as server:
        monkeypatch.setenv(sync.SERVER_VAR, server.url)
        monkeypatch.setenv(sync.TOKEN_VAR, TOKEN)
        yield fake, server


def _argo(server) -> sync.ArgoCd:
    return sync.ArgoCd("production", server.url, TOKEN, poll_seconds=0.01, retry=NO_WAIT)


def test_sync_posts_the_revision_and_waits_for_synced_and_healthy(argocd):
    fake, server = argocd
    result = _argo(server).sync("churn-classifier-production", REVISION, timeout=10)
    assert (result.method, result.target, result.revision) == ("argocd", "churn-classifier-production", REVISION)
    assert result.detail == "Synced, Healthy"
    assert fake.sync_requests == [{"revision": REVISION, "prune": True}]


def test_an_operation_in_progress_is_waited_for(argocd):
    fake, server = argocd
    fake.busy = 2
    assert _argo(server).sync("churn-classifier-staging", REVISION, timeout=10).detail == "Synced, Healthy"
    assert len(fake.sync_requests) == 1


@pytest.mark.parametrize(
    ("phase", "health", "expected"),
    [
        ("Failed", "Healthy", r"sync to 4f2a9c1e0b7d failed: one or more objects failed to apply"),
        ("Succeeded", "Degraded", r"synced to 4f2a9c1e0b7d but Degraded: InferenceService/churn-classifier"),
        ("Running", "Healthy", r"not synced and healthy at 4f2a9c1e0b7d in time \(phase Running"),
    ],
)
def test_failures_name_environment_server_and_application(argocd, phase, health, expected):
    fake, server = argocd
    fake.phase, fake.health = phase, health
    with pytest.raises(sync.SyncError) as caught:
        _argo(server).sync("churn-classifier-production", REVISION, timeout=0.5)
    message = str(caught.value)
    assert f"Argo CD (production) {server.url} application churn-classifier-production" in message
    assert re.search(expected, message), message


def test_an_application_the_token_may_not_sync_is_reported(argocd):
    _, server = argocd
    with pytest.raises(ClusterCallError, match=r"Argo CD \(production\) POST .*/sandbox-app/sync answered 403"):
        _argo(server).sync("sandbox-app", REVISION, timeout=1)


def test_sync_of_a_cluster_environment_goes_through_argocd(argocd, monkeypatch, project_copy):
    fake, server = argocd
    monkeypatch.setenv("MLOPS_BACKEND", "cluster")
    monkeypatch.setenv("GITHUB_SHA", REVISION)
    (project_copy / "deploy" / "argocd").mkdir(exist_ok=True)
    cfg = config.load()
    model = project_copy / "deploy/overlays/staging/model.yaml"
    model.write_text(model.read_text().replace("version: none", "version: '3'"))
    monkeypatch.setattr(sync.ArgoCd, "from_environment", classmethod(lambda cls, env: _argo(server)))
    result = sync.sync(cfg, cfg.env("staging"))
    assert result.target == "churn-classifier-staging" and fake.sync_requests[0]["revision"] == REVISION


def test_a_serving_environment_without_a_model_is_left_alone(project_copy, monkeypatch, capsys, tmp_path):
    from mlrail import cli

    monkeypatch.setenv("MLOPS_BACKEND", "cluster")
    monkeypatch.delenv(sync.SERVER_VAR, raising=False)  # no cluster is contacted at all
    cfg = config.load()
    result = sync.sync(cfg, cfg.env("production"))
    assert (result.method, result.detail) == ("none", "deploy/overlays/production/model.yaml declares no model yet")
    output = tmp_path / "github-output"
    monkeypatch.setenv("GITHUB_OUTPUT", str(output))
    assert cli.main(["sync", "--env", "production"]) == 0
    assert output.read_text() == "served=false\n"  # the workflow's smoke step is skipped


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
        sync.kubectl_apply(cfg, env, REVISION, timeout=30)
    message = str(caught.value)
    assert f"kubectl (sandbox) {server}: `kubectl apply -k deploy/overlays/sandbox` failed" in message
    assert "connection refused" in message
