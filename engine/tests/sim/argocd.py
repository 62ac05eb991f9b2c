"""An Argo CD API emulator and the KServe it deploys to, on 127.0.0.1.

Argo CD (the endpoints cluster/sync.py calls, shapes of Argo CD's v1alpha1 API):
  POST /api/v1/session                       {username, password} -> {token}
  GET  /api/v1/applications/{name}           the Application, status.sync / health / operationState
  POST /api/v1/applications/{name}/sync      {revision, prune}: starts a sync operation
  GET  /api/v1/applications/{name}/resource  the live manifest of one managed resource
A sync renders the overlay **at the synced revision**: `git archive` of the bare repository at
that commit into a temp dir, then `kubectl kustomize <path>`. Every InferenceService found is
handed to the KServe emulator; the Application turns Healthy when KServe reports it Ready.

KServe: downloads the InferenceService's storageUri as the storage initializer does (s3:// with
boto3 against an S3 endpoint such as a moto server; other schemes through `downloaders`) into a
fresh directory and serves it with MLServer through mlrail.serving's LocalEndpoint; status.url
is that server's URL.
"""

from __future__ import annotations

import io
import itertools
import json
import re
import secrets
import shutil
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import yaml

from sim import LocalServer, Request

Downloader = Callable[[str, Path], None]  # (storage URI, destination directory)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class KServeError(Exception):
    pass


# --- KServe -----------------------------------------------------------------------------------


def s3_downloader(endpoint_url: str) -> Downloader:
    """The storage initializer's s3:// download: every object under the prefix, paths kept."""

    def download(uri: str, dest: Path) -> None:
        import boto3

        parts = urlsplit(uri)
        bucket, prefix = parts.netloc, parts.path.lstrip("/")
        client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="emulated",
            aws_secret_access_key="emulated",
        )
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys += [item["Key"] for item in page.get("Contents", [])]
        if not keys:
            raise KServeError(f"Failed to fetch model. No model found in {uri}.")
        for key in keys:
            relative = key[len(prefix) :].lstrip("/") if key != prefix else Path(key).name
            target = dest / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(target))

    return download


@dataclass
class Served:
    namespace: str
    name: str
    storage_uri: str
    model_dir: Path
    url: str
    digest: str
    annotations: dict[str, str]


class KServeEmulator:
    """InferenceServices by (namespace, name): each one a real MLServer on 127.0.0.1."""

    def __init__(self, workdir: Path, downloaders: dict[str, Downloader] | None = None, ready_s: float = 120.0):
        self.workdir = Path(workdir)
        self.downloaders = dict(downloaders or {})
        self.ready_s = ready_s
        self.services: dict[tuple[str, str], dict[str, Any]] = {}  # live manifests
        self.served: dict[tuple[str, str], Served] = {}
        self.downloads: list[tuple[str, str]] = []  # (namespace/name, storage URI)
        self._count = itertools.count(1)
        self._lock = threading.RLock()

    def _endpoint(self, namespace: str, name: str):
        from mlrail import serving

        env = SimpleNamespace(
            name=namespace,
            serving=True,
            local_dir=self.workdir / namespace,
            timeouts=SimpleNamespace(connect_s=2.0, read_s=10.0, deadline_s=30.0, ready_s=self.ready_s),
        )
        return serving.LocalEndpoint(env, name)

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create or update an InferenceService; returns its live object with status."""
        meta = manifest.get("metadata") or {}
        namespace, name = meta.get("namespace", "default"), meta["name"]
        live = json.loads(json.dumps(manifest))
        live.setdefault("metadata", {}).update(
            namespace=namespace, generation=1, uid=f"isvc-{namespace}-{name}", creationTimestamp=_now()
        )
        with self._lock:
            self.services[(namespace, name)] = live
            live["status"] = {"conditions": [{"type": "Ready", "status": "Unknown", "reason": "Deploying"}]}
        try:
            served = self._serve(namespace, name, live)
        except Exception as exc:  # what KServe shows: the predictor failing, with its reason
            message = str(exc).strip().splitlines()[-1][:500] if str(exc).strip() else type(exc).__name__
            live["status"] = {
                "conditions": [{"type": "Ready", "status": "False", "reason": "ModelLoadFailed", "message": message}],
                "modelStatus": {
                    "transitionStatus": "BlockedByFailedLoad",
                    "lastFailureInfo": {"reason": "ModelLoadFailed", "message": message},
                },
            }
            return live
        live["status"] = {
            "url": served.url,
            "address": {"url": served.url},
            "conditions": [
                {"type": "PredictorReady", "status": "True", "lastTransitionTime": _now()},
                {"type": "Ready", "status": "True", "lastTransitionTime": _now()},
            ],
            "modelStatus": {
                "transitionStatus": "UpToDate",
                "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
            },
        }
        return live

    def _serve(self, namespace: str, name: str, live: dict[str, Any]) -> Served:
        from mlrail.artifacts import directory_digest

        model = ((live.get("spec") or {}).get("predictor") or {}).get("model") or {}
        uri = model.get("storageUri") or ""
        fmt = (model.get("modelFormat") or {}).get("name", "")
        if fmt != "mlflow":
            raise KServeError(f"no serving runtime supports modelFormat {fmt!r} (the emulated KServe has mlflow)")
        current = self.served.get((namespace, name))
        if current is not None and current.storage_uri == uri and self._endpoint(namespace, name).ready():
            return current  # same storage URI: KServe leaves the running predictor alone
        scheme = urlsplit(uri).scheme
        download = self.downloaders.get(scheme)
        if download is None:
            raise KServeError(
                f"storageUri {uri!r}: the emulated storage initializer has no {scheme or 'plain path'}:// "
                f"downloader (it has {', '.join(sorted(self.downloaders)) or 'none'}; gs:// comes with sim/storage.py)"
            )
        model_dir = self.workdir / namespace / "models" / f"{name}-{next(self._count)}"
        model_dir.mkdir(parents=True)
        self.downloads.append((f"{namespace}/{name}", uri))
        download(uri, model_dir)
        digest = directory_digest(model_dir)
        annotations = dict((live.get("metadata") or {}).get("annotations") or {})
        version = str(annotations.get("mlops/model-version") or "1")
        status = self._endpoint(namespace, name).deploy(model_dir, version, digest)
        served = Served(namespace, name, uri, model_dir, status.url, digest, annotations)
        with self._lock:
            self.served[(namespace, name)] = served
        return served

    def delete(self, namespace: str, name: str) -> None:
        with self._lock:
            self.services.pop((namespace, name), None)
            self.served.pop((namespace, name), None)
        self._endpoint(namespace, name).stop()

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.services.get((namespace, name))

    def stop_all(self) -> None:
        for namespace, name in list(self.services):
            self.delete(namespace, name)


# --- Argo CD ------------------------------------------------------------------------------------


@dataclass
class Application:
    name: str
    path: str  # the overlay inside the repository, e.g. deploy/overlays/staging
    namespace: str  # destination namespace
    project: str = "default"
    target_revision: str = "main"
    repo_url: str = ""
    # state
    sync_status: str = "OutOfSync"
    sync_revision: str = ""
    health: str = "Missing"
    health_message: str = ""
    operation: dict[str, Any] | None = None
    resources: list[dict[str, Any]] = field(default_factory=list)
    live: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)  # (kind, ns, name) -> manifest
    history: list[dict[str, Any]] = field(default_factory=list)


def applications_from_repository(bare: Path, ref: str = "main", folder: str = "deploy/argocd") -> list[Application]:
    """The Applications the repository's deploy/argocd declares (Application objects and
    ApplicationSets with a list generator), rendered at `ref`."""
    docs = render(bare, ref, folder)
    apps: list[Application] = []

    def add(spec: dict[str, Any], name: str) -> None:
        source, dest = spec.get("source") or {}, spec.get("destination") or {}
        apps.append(
            Application(
                name=name,
                path=source.get("path", ""),
                namespace=dest.get("namespace", "default"),
                project=spec.get("project", "default"),
                target_revision=source.get("targetRevision", "HEAD"),
                repo_url=source.get("repoURL", ""),
            )
        )

    for doc in docs:
        if doc.get("kind") == "Application":
            add(doc.get("spec") or {}, doc["metadata"]["name"])
        elif doc.get("kind") == "ApplicationSet":
            template = (doc.get("spec") or {}).get("template") or {}
            for generator in (doc.get("spec") or {}).get("generators") or []:
                for element in (generator.get("list") or {}).get("elements") or []:
                    text = re.sub(r"\{\{\s*\.(\w+)\s*\}\}", lambda m, e=element: str(e[m[1]]), json.dumps(template))
                    filled = json.loads(text)
                    add(filled.get("spec") or {}, filled["metadata"]["name"])
    return apps


def render(bare: Path, revision: str, path: str) -> list[dict[str, Any]]:
    """`kubectl kustomize <path>` of the repository's tree at `revision` (git archive, not a checkout)."""
    archive = subprocess.run(["git", "archive", "--format=tar", revision], cwd=bare, capture_output=True, check=False)
    if archive.returncode != 0:
        raise KServeError(f"git archive {revision}: {archive.stderr.decode().strip()}")
    scratch = Path(tempfile.mkdtemp(prefix="argocd-render-"))
    try:
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(scratch, filter="data")
        built = subprocess.run(
            ["kubectl", "kustomize", str(scratch / path)], capture_output=True, text=True, check=False, timeout=120
        )
        if built.returncode != 0:
            raise KServeError(f"kustomize build {path} failed: {built.stderr.strip().splitlines()[-1:]}")
        return [doc for doc in yaml.safe_load_all(built.stdout) if doc]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class ArgoCdEmulator:
    """Applications over one bare repository, deploying InferenceServices to `kserve`."""

    def __init__(
        self,
        bare: Path,
        applications: list[Application],
        kserve: KServeEmulator,
        tokens: set[str] | None = None,
        accounts: dict[str, str] | None = None,
        sync_delay_s: float = 0.0,
    ):
        self.bare = Path(bare)
        self.apps = {app.name: app for app in applications}
        self.kserve = kserve
        self.tokens = set(tokens or ())
        self.accounts = dict(accounts or {})  # local accounts: username -> password
        self.sync_delay_s = sync_delay_s  # how long an operation stays Running before it applies
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, token)
        self.syncs: list[tuple[str, str]] = []  # (application, resolved revision)
        self._lock = threading.RLock()
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self.server = LocalServer(self.route)

    def __enter__(self) -> ArgoCdEmulator:
        self.server.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._stopping.set()  # a delayed operation ends instead of applying
        for thread in self._threads:
            thread.join(timeout=self.kserve.ready_s + 30)
        self.server.__exit__(*exc)
        self.kserve.stop_all()

    @property
    def url(self) -> str:
        return self.server.url

    # --- HTTP -------------------------------------------------------------------------------------

    def route(self, request: Request):
        token = _bearer(request.headers)
        with self._lock:
            self.requests.append((request.method, request.path, token))
        if request.path == "/api/v1/session" and request.method == "POST":
            data = request.json() or {}
            if self.accounts.get(data.get("username")) != data.get("password") or not data.get("username"):
                return _grpc_error(401, 16, "Invalid username or password")
            issued = f"argocd-session-{secrets.token_hex(8)}"
            self.tokens.add(issued)
            return 200, {}, {"token": issued}
        if token is None:
            return _grpc_error(401, 16, "no session information")
        if token not in self.tokens:
            return _grpc_error(401, 16, "invalid session: token signature is invalid")
        m = re.fullmatch(r"/api/v1/applications/([^/]+)(/sync|/resource)?", request.path)
        if not m:
            return _grpc_error(404, 5, "Not Found")
        app = self.apps.get(m[1])
        if app is None:  # Argo CD does not tell a caller which applications exist
            return _grpc_error(403, 7, "permission denied")
        if m[2] == "/sync" and request.method == "POST":
            return self._start_sync(app, request.json() or {})
        if m[2] == "/resource" and request.method == "GET":
            key = (request.arg("kind", ""), request.arg("namespace", ""), request.arg("resourceName", ""))
            live = app.live.get(key)
            if key[0] == "InferenceService":
                live = self.kserve.get(key[1], key[2]) or live
            if live is None:
                return _grpc_error(404, 5, f"{key[0]} {key[2]} not found as part of application {app.name}")
            return 200, {}, {"manifest": json.dumps(live)}
        if request.method == "GET" and m[2] is None:
            return 200, {}, self._application_json(app)
        return _grpc_error(404, 5, "Not Found")

    def _application_json(self, app: Application) -> dict[str, Any]:
        status: dict[str, Any] = {
            "sync": {
                "status": app.sync_status,
                "revision": app.sync_revision,
                "comparedTo": {"source": self._source(app)},
            },
            "health": {"status": app.health, **({"message": app.health_message} if app.health_message else {})},
            "resources": app.resources,
            "history": app.history,
            "summary": {},
        }
        if app.operation:
            status["operationState"] = app.operation
        return {
            "metadata": {"name": app.name, "namespace": "argocd"},
            "spec": {
                "project": app.project,
                "source": self._source(app),
                "destination": {"server": "https://kubernetes.default.svc", "namespace": app.namespace},
            },
            "status": status,
        }

    def _source(self, app: Application) -> dict[str, Any]:
        return {"repoURL": app.repo_url or str(self.bare), "path": app.path, "targetRevision": app.target_revision}

    # --- sync -------------------------------------------------------------------------------------

    def _start_sync(self, app: Application, data: dict[str, Any]):
        with self._lock:
            if app.operation and app.operation.get("phase") in ("Running", "Terminating"):
                return _grpc_error(400, 9, "another operation is already in progress")
            revision = data.get("revision") or app.target_revision
            app.operation = {
                "operation": {"sync": {"revision": revision, "prune": bool(data.get("prune"))}},
                "phase": "Running",
                "message": "waiting for completion of hook and sync",
                "startedAt": _now(),
            }
            thread = threading.Thread(target=self._run_sync, args=(app, revision, bool(data.get("prune"))), daemon=True)
            self._threads.append(thread)
            thread.start()
            return 200, {}, self._application_json(app)

    def _finish(self, app: Application, phase: str, message: str, sha: str = "") -> None:
        with self._lock:
            assert app.operation is not None
            app.operation.update(phase=phase, message=message, finishedAt=_now())
            if sha:
                app.operation["syncResult"] = {"revision": sha, "resources": app.resources, "source": self._source(app)}

    def _run_sync(self, app: Application, revision: str, prune: bool) -> None:
        if self.sync_delay_s and self._stopping.wait(self.sync_delay_s):
            return self._finish(app, "Terminating", "the emulator stopped")
        resolved = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"],
            cwd=self.bare,
            capture_output=True,
            text=True,
            check=False,
        )
        if resolved.returncode != 0:
            return self._finish(
                app, "Error", f"rpc error: code = Unknown desc = unable to resolve '{revision}' to a commit SHA"
            )
        sha = resolved.stdout.strip()
        self.syncs.append((app.name, sha))
        try:
            docs = render(self.bare, sha, app.path)
        except KServeError as exc:
            with self._lock:
                app.sync_status = "Unknown"
            return self._finish(app, "Failed", f"ComparisonError: {exc}", sha)
        applied: dict[tuple[str, str, str], dict[str, Any]] = {}
        resources = []
        for doc in docs:
            kind, meta = doc.get("kind", ""), doc.get("metadata") or {}
            namespace = meta.get("namespace", "" if kind == "Namespace" else app.namespace)
            doc.setdefault("metadata", {})["namespace"] = namespace if kind != "Namespace" else None
            group, _, version = doc.get("apiVersion", "v1").rpartition("/")
            applied[(kind, namespace, meta.get("name", ""))] = doc
            health = (
                "Progressing"
                if kind == "InferenceService"
                else ("Healthy" if kind in ("Deployment", "Namespace", "Service") else None)
            )
            resources.append(
                {
                    "group": group,
                    "version": version,
                    "kind": kind,
                    "namespace": namespace,
                    "name": meta.get("name", ""),
                    "status": "Synced",
                    **({"health": {"status": health}} if health else {}),
                }
            )
        with self._lock:
            removed = [key for key in app.live if key not in applied] if prune else []
            app.live.update(applied)
            for key in removed:
                app.live.pop(key, None)
            app.resources, app.sync_status, app.sync_revision = resources, "Synced", sha
            app.health, app.health_message = "Progressing", ""
            app.history.append(
                {"id": len(app.history), "revision": sha, "deployedAt": _now(), "source": self._source(app)}
            )
        self._finish(app, "Succeeded", "successfully synced (all tasks run)", sha)
        for kind, namespace, name in removed:
            if kind == "InferenceService":
                self.kserve.delete(namespace, name)
        # Health follows once the workloads are up: KServe downloads and loads the model.
        degraded = []
        for (kind, namespace, name), doc in applied.items():
            if kind != "InferenceService":
                continue
            live = self.kserve.apply(doc)
            ready = next((c for c in live["status"]["conditions"] if c["type"] == "Ready"), {})
            for res in resources:
                if (res["kind"], res["namespace"], res["name"]) == (kind, namespace, name):
                    healthy = ready.get("status") == "True"
                    res["health"] = {
                        "status": "Healthy" if healthy else "Degraded",
                        **({} if healthy else {"message": ready.get("message", "")}),
                    }
                    if not healthy:
                        degraded.append(f"{kind}/{name}: {ready.get('message', '')}")
        with self._lock:
            app.health = "Degraded" if degraded else "Healthy"
            app.health_message = "; ".join(degraded)


def _bearer(headers: dict[str, str]) -> str | None:
    for key, value in headers.items():
        if key.lower() == "authorization" and value.lower().startswith("bearer "):
            return value[7:].strip() or None
        if key.lower() == "cookie":
            m = re.search(r"argocd\.token=([^;]+)", value)
            if m:
                return m[1]
    return None


def _grpc_error(status: int, code: int, message: str):
    return status, {}, {"error": message, "code": code, "message": message}
