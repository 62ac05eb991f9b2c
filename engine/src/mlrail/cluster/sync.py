"""Make an environment's cluster match its overlay in git.

- Argo CD (the repository has deploy/argocd): ask the Argo CD API to sync the Application
  `<project>-<env>` to the commit being deployed and wait until it is synced and healthy.
- Otherwise: `kubectl apply -k deploy/overlays/<env>` and wait for the InferenceService.
- Local backend: the local endpoint is (re)started from the overlay's model reference.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import Config, Environment
from ..errors import MlopsError
from .http import ClusterCallError, JsonApi, Retry

SERVER_VAR, TOKEN_VAR = "ARGOCD_SERVER", "ARGOCD_AUTH_TOKEN"  # the names the argocd CLI reads
IN_PROGRESS = "another operation is already in progress"
MODEL_FILE = "model.yaml"


class SyncError(MlopsError):
    """An environment could not be synced; the message names the environment and endpoint."""


@dataclass(frozen=True)
class SyncResult:
    env: str
    method: str  # argocd | kubectl | local | none (nothing to serve yet)
    target: str  # Application name, overlay path or endpoint URL
    revision: str
    detail: str


def served_version(root: Path, env: Environment) -> str:
    path = root / env.overlay / MODEL_FILE
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SyncError(f"{path} cannot be read: {exc}") from None
    return str((doc.get("data") or {}).get("version", "none"))


def sync(cfg: Config, env: Environment, revision: str | None = None, timeout: float = 900.0) -> SyncResult:
    """Sync `env`; an overlay that declares no model yet (version: none) is left alone: there is
    nothing verified to serve (e.g. retrain's first production run only opens the deployment PR)."""
    if env.serving and served_version(cfg.root, env) == "none":
        return SyncResult(env.name, "none", env.overlay, "", f"{env.overlay}/{MODEL_FILE} declares no model yet")
    if env.backend == "local":
        return _sync_local(cfg, env)
    revision = revision or os.environ.get("GITHUB_SHA") or _git_head(cfg.root)
    if (cfg.root / "deploy" / "argocd").is_dir():
        return ArgoCd.from_environment(env).sync(f"{cfg.project}-{env.name}", revision, timeout)
    return kubectl_apply(cfg, env, revision, timeout)


def _sync_local(cfg: Config, env: Environment) -> SyncResult:
    from .. import serving

    status = serving.deploy_from_overlay(cfg, env.name)
    detail = f"serving {status.model_name} v{status.version} ({status.digest[:19]})"
    return SyncResult(env.name, "local", status.url, _git_head(cfg.root), detail)


def _git_head(root: Path) -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


# --- Argo CD ------------------------------------------------------------------------------


class ArgoCd:
    """The Argo CD API server (REST): sync one Application and wait for it."""

    def __init__(self, env: str, server: str, token: str, poll_seconds: float = 5.0, retry: Retry | None = None):
        base = server if server.startswith(("http://", "https://")) else f"https://{server}"
        self.env = env
        self.poll_seconds = poll_seconds
        self.api = JsonApi(
            "Argo CD", env, base, headers={"Authorization": f"Bearer {token}"}, timeout=30.0, retry=retry or Retry()
        )

    @classmethod
    def from_environment(cls, env: Environment) -> ArgoCd:
        server, token = os.environ.get(SERVER_VAR, "").strip(), os.environ.get(TOKEN_VAR, "").strip()
        if not server or not token:
            raise SyncError(
                f"syncing {env.name} through Argo CD needs {SERVER_VAR} (host[:port]) and {TOKEN_VAR} "
                "(the environment's Argo CD token)"
            )
        return cls(env.name, server, token)

    def application(self, name: str) -> dict:
        return self.api.json("GET", f"/api/v1/applications/{name}")

    def sync(self, name: str, revision: str, timeout: float) -> SyncResult:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.api.json("POST", f"/api/v1/applications/{name}/sync", json={"revision": revision, "prune": True})
                break
            except ClusterCallError as exc:
                # A sync already running (auto-sync, or a rerun of this job): wait for it, then ours.
                if IN_PROGRESS not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(self.poll_seconds)
        return self.wait(name, revision, deadline)

    def wait(self, name: str, revision: str, deadline: float) -> SyncResult:
        where = f"Argo CD ({self.env}) {self.api.base_url} application {name}"
        while True:
            status = self.application(name).get("status") or {}
            operation = status.get("operationState") or {}
            phase = operation.get("phase", "")
            synced_to = ((operation.get("syncResult") or {}).get("revision")) or ""
            sync_status = (status.get("sync") or {}).get("status", "")
            health = (status.get("health") or {}).get("status", "")
            if phase in ("Failed", "Error") and synced_to == revision:
                raise SyncError(f"{where}: sync to {revision[:12]} {phase.lower()}: {operation.get('message', '')}")
            if phase == "Succeeded" and synced_to == revision and sync_status == "Synced":
                if health == "Healthy":
                    return SyncResult(self.env, "argocd", name, revision, f"{sync_status}, {health}")
                if health == "Degraded":
                    raise SyncError(f"{where}: synced to {revision[:12]} but Degraded: {_health_message(status)}")
            if time.monotonic() >= deadline:
                raise SyncError(
                    f"{where}: not synced and healthy at {revision[:12]} in time (phase {phase or 'none'}, "
                    f"sync {sync_status or 'unknown'}, health {health or 'unknown'})"
                )
            time.sleep(self.poll_seconds)


def _health_message(status: dict) -> str:
    messages = [
        f"{res.get('kind')}/{res.get('name')}: {(res.get('health') or {}).get('message', '')}"
        for res in status.get("resources") or []
        if (res.get("health") or {}).get("status") == "Degraded"
    ]
    return "; ".join(messages) or (status.get("health") or {}).get("message", "no message")


# --- kubectl ------------------------------------------------------------------------------


def _kubectl(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["kubectl", *args], capture_output=True, text=True, timeout=timeout, check=False)


def kube_server() -> str:
    try:
        result = _kubectl(["config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"], 15)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown server"
    return result.stdout.strip() or "no current kubectl context"


def kubectl_apply(cfg: Config, env: Environment, revision: str, timeout: float) -> SyncResult:
    overlay = cfg.root / env.overlay
    server = kube_server()
    where = f"kubectl ({env.name}) {server}"
    request_timeout = f"--request-timeout={min(int(timeout), 120)}s"
    try:
        applied = _kubectl(["apply", "-k", str(overlay), request_timeout], timeout)
    except FileNotFoundError:
        raise SyncError(f"syncing {env.name} needs kubectl on PATH (or Argo CD: deploy/argocd)") from None
    except subprocess.TimeoutExpired:
        raise SyncError(f"{where}: `kubectl apply -k {env.overlay}` did not finish in {timeout:g}s") from None
    if applied.returncode != 0:
        raise SyncError(f"{where}: `kubectl apply -k {env.overlay}` failed: {_last_line(applied.stderr)}")
    detail = f"{len(applied.stdout.splitlines())} resources applied"
    if env.serving:
        waited = _kubectl(
            [
                "wait",
                "--for=condition=Ready",
                f"inferenceservice/{cfg.project}",
                "-n",
                env.namespace,
                f"--timeout={int(timeout)}s",
            ],
            timeout + 30,
        )
        if waited.returncode != 0:
            raise SyncError(f"{where}: InferenceService {cfg.project} is not Ready: {_last_line(waited.stderr)}")
        detail += ", InferenceService Ready"
    return SyncResult(env.name, "kubectl", env.overlay, revision, detail)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:400] if lines else "no output"
