"""Make an environment's cluster match its overlay in git.

- Argo CD (the repository has deploy/argocd): ask the Argo CD API to sync the Application
  `<project>-<env>` to the commit being deployed and wait until it is synced and healthy;
  the served URL is read from the live InferenceService's status.
- Otherwise: `kubectl apply -k deploy/overlays/<env>` and wait for the InferenceService.
- Local backend: the local endpoint is (re)started from the overlay's release.

Every wait ends by a deadline (`timeouts.ready_s`, or the caller's `timeout`), and every
request inside it by the HTTP policy's own (cluster/http.py); a timeout names the
application, the last status seen and the setting to raise.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import git as gitcmd
from ..config import DEFAULT_TIMEOUTS, Config, Environment
from ..errors import MlopsError
from .http import SETTINGS, ClusterCallError, JsonApi, Retry, Timeouts, deadline

SERVER_VAR, TOKEN_VAR = "ARGOCD_SERVER", "ARGOCD_AUTH_TOKEN"  # the names the argocd CLI reads
USERNAME_VAR, PASSWORD_VAR = "ARGOCD_USERNAME", "ARGOCD_PASSWORD"  # a local account: POST /api/v1/session
IN_PROGRESS = "another operation is already in progress"
READY_SETTING = "timeouts.ready_s"
ISVC_GROUP, ISVC_VERSION, ISVC_KIND = "serving.kserve.io", "v1beta1", "InferenceService"


class SyncError(MlopsError):
    """An environment could not be synced; the message names the environment and endpoint."""


@dataclass(frozen=True)
class SyncResult:
    env: str
    method: str  # argocd | kubectl | local | none (nothing to serve yet)
    target: str  # Application name, overlay path or endpoint URL
    revision: str
    detail: str
    url: str = ""  # the served InferenceService's URL (status.url), when there is one


def served_version(root: Path, env: Environment) -> str:
    """The model version the overlay's release declares ("none" before any model)."""
    from ..release import ReleaseError, read_release

    try:
        return str(read_release(root / env.overlay).model.version)
    except ReleaseError as exc:
        raise SyncError(str(exc)) from None


def wait_seconds(env: Environment, timeout: float | None) -> tuple[float, str]:
    """How long a sync may wait, and the setting that says so."""
    if timeout is not None:
        return float(timeout), "--timeout"
    configured = getattr(getattr(env, "timeouts", None), "ready_s", None)
    return (float(configured) if configured else 60.0), f"{READY_SETTING} in {SETTINGS}"


def sync(cfg: Config, env: Environment, revision: str | None = None, timeout: float | None = None) -> SyncResult:
    """Sync `env`; an overlay that declares no model yet (version: none) is left alone: there is
    nothing verified to serve (e.g. retrain's first production run only opens the deployment PR)."""
    if env.serving and served_version(cfg.root, env) == "none":
        return SyncResult(env.name, "none", env.overlay, "", f"{env.overlay}/release.yaml declares no model yet")
    if env.backend == "local":
        return _sync_local(cfg, env)
    revision = revision or os.environ.get("GITHUB_SHA") or _git_head(cfg.root)
    seconds, setting = wait_seconds(env, timeout)
    if (cfg.root / "deploy" / "argocd").is_dir():
        return ArgoCd.from_environment(env).sync(f"{cfg.project}-{env.name}", revision, seconds, setting)
    return kubectl_apply(cfg, env, revision, seconds, setting)


def _sync_local(cfg: Config, env: Environment) -> SyncResult:
    from .. import serving

    status = serving.deploy_from_overlay(cfg, env.name)
    detail = f"serving {status.model_name} v{status.version} ({status.digest[:19]})"
    return SyncResult(env.name, "local", status.url, _git_head(cfg.root), detail, url=status.url)


def _git_head(root: Path) -> str:
    return gitcmd.rev(root, "HEAD") or "unknown"


# --- Argo CD ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Seen:
    """What one poll of the Application showed."""

    phase: str = ""
    synced_to: str = ""
    sync_status: str = ""
    health: str = ""
    message: str = ""
    error: str = ""

    def describe(self) -> str:
        if self.error and not (self.phase or self.sync_status):
            return f"no status: {self.error}"
        text = (
            f"phase {self.phase or 'none'}, sync {self.sync_status or 'unknown'}, "
            f"health {self.health or 'unknown'}, revision {self.synced_to[:12] or 'none'}"
        )
        return text + (f"; last poll failed: {self.error}" if self.error else "")


class ArgoCd:
    """The Argo CD API server (REST): sync one Application and wait for it."""

    def __init__(
        self,
        env: str,
        server: str,
        token: str | None = None,
        *,
        username: str | None = None,
        password: str | None = None,
        poll_seconds: float = 5.0,
        timeouts: Timeouts | None = None,
        retry: Retry | None = None,
    ):
        base = server if server.startswith(("http://", "https://")) else f"https://{server}"
        self.env = env
        self.poll_seconds = poll_seconds
        self.api = JsonApi("Argo CD", env, base, timeouts=timeouts or Timeouts(), retry=retry or Retry())
        if token is None:
            if not (username and password):
                raise SyncError(f"Argo CD ({env}) {base}: give a token, or a username and password for a session")
            token = self.session_token(username, password)
        self.api.headers["Authorization"] = f"Bearer {token}"

    @classmethod
    def from_environment(cls, env: Environment) -> ArgoCd:
        server = os.environ.get(SERVER_VAR, "").strip()
        token = os.environ.get(TOKEN_VAR, "").strip()
        username, password = os.environ.get(USERNAME_VAR, "").strip(), os.environ.get(PASSWORD_VAR, "")
        if not server or not (token or (username and password)):
            raise SyncError(
                f"syncing {env.name} through Argo CD needs {SERVER_VAR} (host[:port]) and {TOKEN_VAR} "
                f"(the environment's Argo CD token), or {USERNAME_VAR} and {PASSWORD_VAR} of a local account"
            )
        poll = getattr(getattr(env, "timeouts", None), "poll_s", DEFAULT_TIMEOUTS.poll_s)  # timeouts.poll_s
        return cls(
            env.name,
            server,
            token or None,
            username=username,
            password=password,
            timeouts=Timeouts.of(env),
            poll_seconds=float(poll),
        )

    def session_token(self, username: str, password: str) -> str:
        """POST /api/v1/session: a session token for a local account."""
        answer = self.api.json("POST", "/api/v1/session", json={"username": username, "password": password})
        token = (answer or {}).get("token")
        if not token:
            raise SyncError(f"Argo CD ({self.env}) {self.api.base_url}: POST /api/v1/session returned no token")
        return token

    def application(self, name: str) -> dict:
        return self.api.json("GET", f"/api/v1/applications/{name}")

    def sync(
        self, name: str, revision: str, timeout: float, setting: str = f"{READY_SETTING} in {SETTINGS}"
    ) -> SyncResult:
        """POST the sync of `revision`, then wait until the Application is synced there and healthy."""
        where = f"Argo CD ({self.env}) {self.api.base_url} application {name}"
        ends = time.monotonic() + timeout
        while True:
            try:
                with deadline(max(ends - time.monotonic(), 0.01), setting):
                    self.api.json(
                        "POST", f"/api/v1/applications/{name}/sync", json={"revision": revision, "prune": True}
                    )
                break
            except ClusterCallError as exc:
                # A sync already running (auto-sync, or a rerun of this job): wait for it, then ours.
                if IN_PROGRESS not in str(exc):
                    raise
                if time.monotonic() >= ends:
                    raise SyncError(
                        f"{where}: another sync operation was still running after {timeout:g}s; raise {setting}"
                    ) from None
                time.sleep(min(self.poll_seconds, max(ends - time.monotonic(), 0)))
        return self.wait(name, revision, ends, timeout, setting)

    def wait(self, name: str, revision: str, ends: float, timeout: float, setting: str) -> SyncResult:
        where = f"Argo CD ({self.env}) {self.api.base_url} application {name}"
        seen = _Seen()
        while True:
            try:
                with deadline(max(ends - time.monotonic(), 0.01), setting):
                    app = self.application(name)
                seen = _observe(app)
            except ClusterCallError as exc:
                if exc.status in (401, 403, 404):
                    raise
                seen = _Seen(seen.phase, seen.synced_to, seen.sync_status, seen.health, seen.message, str(exc))
                app = None
            if app is not None:
                if seen.phase in ("Failed", "Error") and seen.synced_to in (revision, ""):
                    raise SyncError(f"{where}: sync to {revision[:12]} {seen.phase.lower()}: {seen.message}")
                if seen.phase == "Succeeded" and seen.synced_to == revision and seen.sync_status == "Synced":
                    if seen.health == "Healthy":
                        url = self.inference_service_url(name, app)
                        detail = f"{seen.sync_status}, {seen.health}" + (f", serving {url}" if url else "")
                        return SyncResult(self.env, "argocd", name, revision, detail, url=url)
                    if seen.health == "Degraded":
                        reason = _health_message(app.get("status") or {})
                        raise SyncError(f"{where}: synced to {revision[:12]} but Degraded: {reason}")
            left = ends - time.monotonic()
            if left <= 0:
                raise SyncError(
                    f"{where}: not synced and healthy at {revision[:12]} within {timeout:g}s "
                    f"(last seen: {seen.describe()}); raise {setting}"
                )
            time.sleep(min(self.poll_seconds, left))

    def inference_service_url(self, name: str, app: dict) -> str:
        """status.url of the Application's InferenceService, read from its live manifest ("" if none)."""
        for res in (app.get("status") or {}).get("resources") or []:
            if res.get("kind") == ISVC_KIND and res.get("group", ISVC_GROUP) == ISVC_GROUP:
                live = self.api.json(
                    "GET",
                    f"/api/v1/applications/{name}/resource",
                    params={
                        "namespace": res.get("namespace", ""),
                        "resourceName": res.get("name", ""),
                        "group": ISVC_GROUP,
                        "version": res.get("version", ISVC_VERSION),
                        "kind": ISVC_KIND,
                    },
                )
                manifest = json.loads((live or {}).get("manifest") or "{}")
                return str(((manifest.get("status") or {}).get("url")) or "")
        return ""


def _observe(app: dict[str, Any]) -> _Seen:
    status = app.get("status") or {}
    operation = status.get("operationState") or {}
    return _Seen(
        phase=operation.get("phase", ""),
        synced_to=((operation.get("syncResult") or {}).get("revision")) or "",
        sync_status=(status.get("sync") or {}).get("status", ""),
        health=(status.get("health") or {}).get("status", ""),
        message=operation.get("message", ""),
    )


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


def kubectl_apply(
    cfg: Config, env: Environment, revision: str, timeout: float, setting: str = f"{READY_SETTING} in {SETTINGS}"
) -> SyncResult:
    overlay = cfg.root / env.overlay
    server = kube_server()
    where = f"kubectl ({env.name}) {server}"
    ends = time.monotonic() + timeout

    def left() -> float:
        return max(ends - time.monotonic(), 1.0)

    try:
        applied = _kubectl(["apply", "-k", str(overlay), f"--request-timeout={int(min(left(), 120))}s"], left() + 5)
    except FileNotFoundError:
        raise SyncError(f"syncing {env.name} needs kubectl on PATH (or Argo CD: deploy/argocd)") from None
    except subprocess.TimeoutExpired:
        raise SyncError(
            f"{where}: `kubectl apply -k {env.overlay}` did not finish in {timeout:g}s; raise {setting}"
        ) from None
    if applied.returncode != 0:
        raise SyncError(f"{where}: `kubectl apply -k {env.overlay}` failed: {_last_line(applied.stderr)}")
    detail = f"{len(applied.stdout.splitlines())} resources applied"
    url = ""
    if env.serving:
        isvc = ["inferenceservice/" + cfg.project, "-n", env.namespace]
        try:
            waited = _kubectl(["wait", "--for=condition=Ready", *isvc, f"--timeout={int(left())}s"], left() + 5)
        except subprocess.TimeoutExpired:
            waited = subprocess.CompletedProcess([], 1, "", "timed out waiting for the condition")
        if waited.returncode != 0:
            raise SyncError(
                f"{where}: InferenceService {cfg.project} is not Ready within {timeout:g}s: "
                f"{_last_line(waited.stderr)}; raise {setting}"
            )
        try:
            got = _kubectl(["get", *isvc, "-o", "jsonpath={.status.url}"], min(left(), 30))
            url = got.stdout.strip() if got.returncode == 0 else ""
        except subprocess.TimeoutExpired:
            url = ""
        detail += ", InferenceService Ready" + (f", serving {url}" if url else "")
    return SyncResult(env.name, "kubectl", env.overlay, revision, detail, url=url)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:400] if lines else "no output"
