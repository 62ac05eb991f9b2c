"""The whole cluster simulation behind one harness, for the end-to-end tests of the cluster backend.

`ClusterSimulation` starts, on 127.0.0.1 and for one generated repository:
- the object stores: moto's S3 server and the GCS emulator, one bucket per environment;
- one real `mlflow server` per promoted environment (staging, production), its artifacts in the
  environment's bucket;
- the KFP API emulator (runs execute the project's components, artifacts under the bucket's
  pipeline root), the GitHub API emulator over a bare repository holding the generated project,
  and the Argo CD + KServe emulator reading the Applications of the repository's deploy/argocd.
It rewrites the repository's `cluster:` settings to point at them (committed like any change).

Identities, as IAM and OIDC would give them on a real cluster: a CI job runs as `staging`,
`production`, `pull-request` or `release-check` (the PR workflow's release job), each with its own
S3 access key, GCS endpoint (a recording proxy: the emulator has no authentication), MLflow token,
KFP token and Argo CD token. Every request is
recorded with its identity, and a policy refuses what the identity may not touch (403), so a
staging job that reaches production's registry or bucket fails as it would under IAM:
staging may use the staging bucket and registry only; production those of production and, read
as transit documents, staging's; pull-request checks no cloud service at all; release-check
reads the staging and production registries (tests assert it reads nothing else).

`job(identity, sha, target...)` runs a workflow job's make targets the way a runner does:
a fresh clone at the commit (actions/checkout), the job's identity in its environment, the
engine's virtualenv as the bootstrapped one.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from sim.argocd import ArgoCdEmulator, KServeEmulator, applications_from_repository, s3_downloader
from sim.github_api import APP_LOGIN, GitHubEmulator, git
from sim.kfp_api import GcsObjects, KfpEmulator, S3Objects

HOST = "127.0.0.1"
REPOSITORY = "my-org/churn-classifier"
ENVIRONMENTS = ("sandbox", "staging", "production")
IDENTITIES = ("pull-request", "release-check", "staging", "production")
APP_TOKEN = "ghs_emulated-installation-token"  # noqa: S105 - the GitHub App installation token (both CI jobs)
PR_TOKEN = "ghs_pull-request-job-token"  # noqa: S105 - the PR workflow's read-only GITHUB_TOKEN
REVIEWER_TOKEN = "ghp_release-owner"  # noqa: S105 - a release owner approving and merging in the UI
DEV_TOKEN = "ghp_developer"  # noqa: S105 - a developer opening a PR in the UI
# What each identity may touch: environment -> access, "rw" or "r" (transit's read of staging).
POLICY: dict[str, dict[str, str]] = {
    "pull-request": {},
    "release-check": {"staging": "r", "production": "r"},  # MLflow only, read-only (the PR's release job)
    "staging": {"staging": "rw"},
    "production": {"production": "rw", "staging": "r"},
}
READS = frozenset({"GET", "HEAD"})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def bucket_name(project: str, env: str) -> str:
    return f"{project}-{env}-models"


@dataclass
class Access:
    """One request to a cloud service: who, to which service and environment, allowed or not."""

    identity: str
    service: str  # s3 | gcs | mlflow
    env: str | None  # the environment whose bucket / registry it addressed (None: none of ours)
    method: str
    path: str
    allowed: bool


@dataclass
class AccessLog:
    entries: list[Access] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def decide(self, identity: str, service: str, env: str | None, method: str, path: str) -> bool:
        if identity == "cluster" or env is None:
            allowed = True  # the cluster's own services (KFP, KServe, MLflow servers), or no bucket
        else:
            access = POLICY.get(identity, {}).get(env, "")
            allowed = access == "rw" or (access == "r" and method in READS)
        with self.lock:
            self.entries.append(Access(identity, service, env, method, path, allowed))
        return allowed

    def touched(self, identity: str, service: str | None = None) -> set[str]:
        return {
            a.env
            for a in self.entries
            if a.identity == identity and a.env and (service is None or a.service == service)
        }

    def denied(self) -> list[Access]:
        return [a for a in self.entries if not a.allowed]


# --- object stores with identities ----------------------------------------------------------------------


class PolicedS3:
    """moto's S3 server behind a WSGI middleware: the SigV4 access key names the identity, the
    path-style bucket (and x-amz-copy-source) the environment; a refused request gets S3's AccessDenied."""

    def __init__(self, log: AccessLog, keys: dict[str, str], buckets: dict[str, str]):
        self.log, self.keys, self.buckets = log, keys, buckets  # access key -> identity, bucket -> env
        self.url = ""

    def start(self) -> PolicedS3:
        from moto.server import DomainDispatcherApplication, create_backend_app
        from werkzeug.serving import make_server

        app = DomainDispatcherApplication(create_backend_app)

        def policed(environ, start_response):
            auth = environ.get("HTTP_AUTHORIZATION", "") + " " + environ.get("QUERY_STRING", "")
            found = re.search(r"Credential=([A-Za-z0-9]+)(?:/|%2F)", auth)
            identity = self.keys.get(found[1], "unknown") if found else "anonymous"
            path = unquote(environ.get("PATH_INFO", ""))
            touched = {path.strip("/").split("/", 1)[0]}
            source = environ.get("HTTP_X_AMZ_COPY_SOURCE")
            if source:
                touched.add(unquote(source).lstrip("/").split("/", 1)[0])
            allowed = True
            method = environ["REQUEST_METHOD"]
            for bucket in sorted(touched):
                env = self.buckets.get(bucket)
                # a copy reads its source: judge it as a read
                verb = "GET" if source and bucket == unquote(source).lstrip("/").split("/", 1)[0] else method
                allowed = self.log.decide(identity, "s3", env, verb, path) and allowed
            if not allowed:
                body = (
                    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                    b"<Message>Access Denied</Message></Error>"
                )
                start_response(
                    "403 Forbidden", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))]
                )
                return [body]
            return app(environ, start_response)

        self._server = make_server(HOST, 0, policed, threaded=True)
        self.url = f"http://{HOST}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)

    def client(self, key: str = "AKIACLUSTER"):
        import boto3

        return boto3.session.Session(
            aws_access_key_id=key, aws_secret_access_key="emulated", region_name="us-east-1"
        ).client("s3", endpoint_url=self.url)

    def keys_in(self, bucket: str, prefix: str = "") -> list[str]:
        client = self.client()
        found = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found += [item["Key"] for item in page.get("Contents", [])]
        return sorted(found)


class ForwardingProxy:
    """An HTTP proxy in front of one upstream: judges each request (identity, environment) and
    forwards it; the upstream's host in a response body is rewritten to the proxy's own (media links)."""

    def __init__(self, upstream: str, judge):
        self.upstream = urlsplit(upstream)
        self.judge = judge  # (method, path, headers) -> bool
        self.url = ""

    def start(self) -> ForwardingProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if not proxy.judge(self.command, unquote(urlsplit(self.path).path), dict(self.headers)):
                    data = json.dumps({"error": {"code": 403, "message": "Forbidden: not this identity's environment"},
                                       "error_code": "PERMISSION_DENIED", "message": "Forbidden"}).encode()  # fmt: skip
                    self._reply(403, {"Content-Type": "application/json"}, data)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                headers["Host"] = proxy.upstream.netloc
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    answer = conn.getresponse()
                    data = answer.read()
                    kept = {
                        k: v
                        for k, v in answer.getheaders()
                        if k.lower() not in ("content-length", "transfer-encoding", "connection")
                    }
                    data = data.replace(proxy.upstream.netloc.encode(), urlsplit(proxy.url).netloc.encode())
                    self._reply(answer.status, kept, data, head=self.command == "HEAD")
                finally:
                    conn.close()

            def _reply(self, status, headers, data, head=False):
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if not head:
                        self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        self._httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://{HOST}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


def gcs_buckets_of(path: str) -> list[str]:
    """The buckets a GCS JSON/XML API path names (a rewrite names two)."""
    found = re.findall(r"/b/([^/]+)", path)
    if not found and not path.startswith(("/storage/", "/upload/", "/download/", "/batch/")):
        first = path.strip("/").split("/", 1)[0]
        found = [first] if first else []
    return found


def gcs_downloader(endpoint: str):
    """The storage initializer's gs:// download, against the GCS emulator."""

    def download(uri: str, dest: Path) -> None:
        parts = urlsplit(uri)
        GcsObjects(endpoint).download(parts.netloc, parts.path.lstrip("/"), dest)

    return download


# --- MLflow -----------------------------------------------------------------------------------------------


class MlflowServer:
    """`mlflow server` for one environment: SQLite backend store, artifacts in the environment's bucket."""

    def __init__(self, env: str, workdir: Path, artifact_root: str, environ: dict[str, str]):
        self.env, self.workdir, self.artifact_root, self.environ = env, workdir, artifact_root, environ
        self.port = _free_port()
        self.url = f"http://{HOST}:{self.port}"

    def start(self, ready_s: float = 90.0) -> MlflowServer:
        import requests

        self.workdir.mkdir(parents=True, exist_ok=True)
        command = [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.workdir / 'mlflow.db'}",
            "--default-artifact-root",
            f"{self.artifact_root}/mlflow",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]
        self.log = open(self.workdir / "server.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=self.environ, start_new_session=True
        )
        ends = time.monotonic() + ready_s
        while time.monotonic() < ends:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server ({self.env}) exited: {(self.workdir / 'server.log').read_text()[-800:]}"
                )
            try:
                if requests.get(f"{self.url}/health", timeout=2).ok:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"mlflow server ({self.env}) not healthy within {ready_s}s")

    def stop(self) -> None:
        import signal

        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        self.log.close()


# --- the harness ------------------------------------------------------------------------------------------


@dataclass
class JobResult:
    identity: str
    sha: str
    targets: tuple[str, ...]
    returncode: int
    output: str
    seconds: float
    outputs: dict[str, str]  # GITHUB_OUTPUT of the job's steps

    def check(self) -> JobResult:
        if self.returncode != 0:
            raise AssertionError(
                f"job as {self.identity} at {self.sha[:12]} ({' && '.join(self.targets)}) failed "
                f"({self.returncode}):\n{self.output[-6000:]}"
            )
        return self


class ClusterSimulation:
    """Every emulator of the cluster simulation for one generated repository (`source`: its tree)."""

    def __init__(self, workdir: Path, source: Path, store: str = "s3", image_digest: str | None = None):
        if store not in ("s3", "gs"):
            raise ValueError(f"store {store!r}: expected s3 or gs")
        self.workdir = Path(workdir)
        self.source = Path(source)
        self.store = store
        self.log = AccessLog()
        self.image_digest = image_digest or "sha256:" + "5" * 64  # the pushed image's digest stand-in
        config = yaml.safe_load((self.source / "config/environments.yaml").read_text())
        self.project = config["project"]
        self.namespaces = {env: config["environments"][env]["namespace"] for env in ENVIRONMENTS}
        self.buckets = {env: bucket_name(self.project, env) for env in ENVIRONMENTS}
        self.env_of_bucket = {bucket: env for env, bucket in self.buckets.items()}
        # the cluster's own service accounts (KFP's S3Objects, KServe's storage initializer, the MLflow servers)
        cluster_keys = {"AKIACLUSTER": "cluster", "testing": "cluster", "emulated": "cluster"}
        self.s3_keys = {**cluster_keys, **{f"AKIA{i.upper().replace('-', '')}": i for i in IDENTITIES}}
        self.timings: dict[str, float] = {}
        self.jobs: list[JobResult] = []
        self._stack = ExitStack()

    # --- lifecycle -----------------------------------------------------------------------------------

    def __enter__(self) -> ClusterSimulation:
        started = time.perf_counter()
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        self.timings["start"] = round(time.perf_counter() - started, 1)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def artifact_root(self, env: str) -> str:
        return f"{self.store}://{self.buckets[env]}"

    def _start(self) -> None:
        from sim.storage import GCSEmulator

        self.workdir.mkdir(parents=True, exist_ok=True)
        # Object stores: S3 (policed by access key) and GCS (policed by a proxy per identity).
        self.s3 = PolicedS3(self.log, self.s3_keys, self.env_of_bucket).start()
        self._stack.callback(self.s3.stop)
        self.gcs = GCSEmulator().start()
        self._stack.callback(self.gcs.stop)
        s3 = self.s3.client("AKIACLUSTER")
        gcs = self.gcs.client()
        for bucket in self.buckets.values():
            s3.create_bucket(Bucket=bucket)
            gcs.create_bucket(bucket)
        self.gcs_proxies = {}
        for identity in IDENTITIES:
            proxy = ForwardingProxy(self.gcs.url, self._gcs_judge(identity)).start()
            self._stack.callback(proxy.stop)
            self.gcs_proxies[identity] = proxy
        # The cluster's own services reach the stores directly, with the cluster's key.
        cluster_env = {
            **os.environ,
            **self._store_env("cluster"),
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
        cluster_env["STORAGE_EMULATOR_HOST"] = self.gcs.url
        # MLflow per promoted environment, each behind a proxy that knows the callers' tokens.
        self.mlflow: dict[str, MlflowServer] = {}
        self.registries: dict[str, ForwardingProxy] = {}
        for env in ("staging", "production"):
            server = MlflowServer(env, self.workdir / "mlflow" / env, self.artifact_root(env), cluster_env).start()
            self._stack.callback(server.stop)
            self.mlflow[env] = server
            proxy = ForwardingProxy(server.url, self._mlflow_judge(env)).start()
            self._stack.callback(proxy.stop)
            self.registries[env] = proxy
        # KFP: runs read and write the stores as the cluster (KFP's own service account).
        self._cluster_environ(cluster_env)
        stores = {"s3": S3Objects(self.s3.url), "gs": GcsObjects(self.gcs.url)}
        self.kfp = KfpEmulator(self.workdir / "kfp", stores)
        self._stack.enter_context(self.kfp)
        # The repository: the generated tree with cluster settings pointing here, on a bare remote.
        self.bare = self.workdir / "github" / "repo.git"
        self.initial = self._seed_repository()
        self.github = GitHubEmulator(
            self.bare,
            REPOSITORY,
            tokens={
                APP_TOKEN: APP_LOGIN,
                PR_TOKEN: "github-actions[bot]",
                REVIEWER_TOKEN: "release-owner",
                DEV_TOKEN: "developer",
            },
            merge_methods=("merge", "squash"),
        )
        self._stack.enter_context(self.github)
        # Argo CD + KServe: the Applications the repository declares; one token per environment's CI.
        kserve = KServeEmulator(
            self.workdir / "kserve",
            downloaders={"s3": s3_downloader(self.s3.url), "gs": gcs_downloader(self.gcs.url)},
            ready_s=90,
        )
        self.argocd_tokens = {identity: f"argocd-{identity}-token" for identity in ("staging", "production")}
        self.argocd = ArgoCdEmulator(
            self.bare, applications_from_repository(self.bare, "main"), kserve, tokens=set(self.argocd_tokens.values())
        )
        self._stack.enter_context(self.argocd)
        self.kserve = kserve

    def _cluster_environ(self, cluster_env: dict[str, str]) -> None:
        """The KFP emulator runs components in this process's environment: as the cluster."""
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
            os.environ[key] = cluster_env[key]
        os.environ["STORAGE_EMULATOR_HOST"] = self.gcs.url

    def _gcs_judge(self, identity: str):
        def judge(method: str, path: str, headers: dict[str, str]) -> bool:
            buckets = gcs_buckets_of(path) or [None]
            allowed = True
            for index, bucket in enumerate(buckets):
                copying = "/rewriteTo/" in path or "/copyTo/" in path
                verb = "GET" if copying and index == 0 else method  # a copy or rewrite reads its source
                allowed = self.log.decide(identity, "gcs", self.env_of_bucket.get(bucket), verb, path) and allowed
            return allowed

        return judge

    def _mlflow_judge(self, env: str):
        tokens = {f"mlflow-{identity}-token": identity for identity in IDENTITIES}

        def judge(method: str, path: str, headers: dict[str, str]) -> bool:
            auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
            identity = tokens.get(auth.removeprefix("Bearer ").strip(), "anonymous")
            # MLflow's client reads with POST too (search endpoints): judge by the REST verb's intent.
            reading = method == "GET" or path.endswith(("/search", "/get", "/get-by-alias", "/get-by-name"))
            return self.log.decide(identity, "mlflow", env, "GET" if reading else method, path)

        return judge

    def _store_env(self, identity: str) -> dict[str, str]:
        key = next(k for k, v in self.s3_keys.items() if v == identity)
        return {
            "AWS_ACCESS_KEY_ID": key,
            "AWS_SECRET_ACCESS_KEY": "emulated",
            "AWS_ENDPOINT_URL": self.s3.url,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(self.workdir / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.workdir / "no-aws-credentials"),
        }

    def _seed_repository(self) -> str:
        """The generated tree, with `cluster:` pointing at the simulation, as main of the bare remote."""
        tree = self.workdir / "seed"
        shutil.copytree(self.source, tree, ignore=shutil.ignore_patterns(".git", ".venv", ".mlops", "build"))
        path = tree / "config/environments.yaml"
        config = yaml.safe_load(path.read_text())
        for env in ENVIRONMENTS:
            registry = self.registries.get(env)
            config["environments"][env]["cluster"] = {
                "kfp_endpoint": self.kfp.url,
                # sandbox has no server here: the flows under test never use it
                "registry_uri": registry.url if registry else f"http://{HOST}:9/unused-sandbox-registry",
                "artifact_root": self.artifact_root(env),
                "endpoint_url": f"http://{self.project}.{self.namespaces[env]}.svc.cluster.local",
            }
        # the emulators answer at once: poll them every half second rather than every 5 s
        config["timeouts"] = {**config.get("timeouts", {}), "run_s": 600, "ready_s": 90, "poll_s": 0.5}
        path.write_text(
            "# cluster: settings point at the cluster simulation (engine/tests/sim/cluster.py)\n"
            + yaml.safe_dump(config, sort_keys=False)
        )
        env = {"GIT_AUTHOR_NAME": "dev", "GIT_AUTHOR_EMAIL": "dev@example.com",
               "GIT_COMMITTER_NAME": "dev", "GIT_COMMITTER_EMAIL": "dev@example.com"}  # fmt: skip
        git(tree, "init", "--quiet", "--initial-branch=main")
        git(tree, "add", "-A")
        git(
            tree, "commit", "--quiet", "-m", "Generated from the template, cluster settings for the simulation", env=env
        )
        self.bare.parent.mkdir(parents=True, exist_ok=True)
        git(self.bare.parent, "clone", "--quiet", "--bare", str(tree), str(self.bare))
        return git(self.bare, "rev-parse", "refs/heads/main")

    # --- CI jobs ---------------------------------------------------------------------------------------

    def job_environment(self, identity: str, sha: str, workspace: Path) -> dict[str, str]:
        venv = Path(sys.executable).parent
        environ = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("AWS_", "MLOPS_", "MLFLOW_", "GITHUB_", "GH_", "ARGOCD_", "KFP_", "PYTEST_"))
            and key not in ("STORAGE_EMULATOR_HOST", "PROJECT_IMAGE", "VIRTUAL_ENV")
        }
        environ.update(
            PATH=f"{venv}{os.pathsep}{os.environ.get('PATH', '')}",
            VENV=str(venv.parent),
            BOOTSTRAPPED="yes",
            PYTHONPATH=str(workspace / "src"),
            MLOPS_BACKEND="cluster",
            MLFLOW_DISABLE_TELEMETRY="true",
            PYTHONDONTWRITEBYTECODE="1",
            GITHUB_ACTIONS="true",
            GITHUB_API_URL=self.github.url,
            GITHUB_REPOSITORY=REPOSITORY,
            GITHUB_SHA=sha,
            GITHUB_OUTPUT=str(workspace.parent / f"{workspace.name}.output"),
            GOOGLE_CLOUD_PROJECT="mlrail-sim",
            STORAGE_EMULATOR_HOST=self.gcs_proxies[identity].url,
            MLFLOW_TRACKING_TOKEN=f"mlflow-{identity}-token",
            ARGOCD_SERVER=self.argocd.url,
            **self._store_env(identity),
        )
        if identity in ("staging", "production"):
            environ.update(GH_TOKEN=APP_TOKEN, ARGOCD_AUTH_TOKEN=self.argocd_tokens[identity])
        else:
            environ.update(GH_TOKEN=PR_TOKEN)
        return environ

    def checkout(self, sha: str, name: str) -> Path:
        """actions/checkout: a fresh clone of the remote at `sha` (full history, for diffs and rollbacks)."""
        workspace = self.workdir / "jobs" / name
        shutil.rmtree(workspace, ignore_errors=True)
        workspace.parent.mkdir(parents=True, exist_ok=True)
        git(workspace.parent, "clone", "--quiet", "--no-hardlinks", str(self.bare), str(workspace))
        git(workspace, "checkout", "--quiet", "-B", "main", sha)
        git(workspace, "config", "user.name", "ci")
        git(workspace, "config", "user.email", "ci@example.com")
        return workspace

    def job(self, identity: str, sha: str, *steps: str, timeout: float = 900.0) -> JobResult:
        """Run make steps (each "target VAR=value ...") as `identity` in a checkout of `sha`, in order."""
        name = f"{len(self.jobs):02d}-{identity}"
        workspace = self.checkout(sha, name)
        environ = self.job_environment(identity, sha, workspace)
        output_file = Path(environ["GITHUB_OUTPUT"])
        output_file.write_text("")
        started = time.perf_counter()
        chunks, code = [], 0
        for step in steps:
            # `{name}`: an output of an earlier step (GITHUB_OUTPUT), as `${{ steps.x.outputs.name }}`
            known = dict(line.split("=", 1) for line in output_file.read_text().splitlines() if "=" in line)
            # `?name target...`: the step's `if: steps.x.outputs.name == 'true'`
            condition, _, rest = step.partition(" ")
            if condition.startswith("?"):
                if known.get(condition[1:]) != "true":
                    chunks.append(f"$ make {rest}  (skipped: {condition[1:]} is not true)")
                    continue
                step = rest
            args = [re.sub(r"\{(\w+)\}", lambda m, k=known: k.get(m[1], ""), word) for word in step.split()]
            done = subprocess.run(
                ["make", "--no-print-directory", *args],
                cwd=workspace,
                env=environ,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            chunks.append(f"$ make {step}\n{done.stdout}{done.stderr}")
            code = done.returncode
            if code != 0:
                break
        outputs = dict(line.split("=", 1) for line in output_file.read_text().splitlines() if "=" in line)
        result = JobResult(
            identity, sha, steps, code, "\n".join(chunks), round(time.perf_counter() - started, 1), outputs
        )
        self.jobs.append(result)
        return result

    # --- GitHub as people use it ------------------------------------------------------------------------

    def open_pull_request(self, branch: str, files: dict[str, str], title: str) -> int:
        """A developer pushes `branch` (main + files) and opens a PR in the UI."""
        work = self.checkout(self.main(), f"dev-{branch.replace('/', '-')}")
        for path, text in files.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_text(text)
        git(work, "checkout", "--quiet", "-b", branch)
        git(work, "commit", "--quiet", "-am", title)
        git(work, "push", "--quiet", "origin", f"{branch}:refs/heads/{branch}")
        status, body = self.api(
            "POST", "/pulls", {"title": title, "head": branch, "base": "main", "body": title}, token=DEV_TOKEN
        )
        assert status == 201, (status, body)
        return body["number"]

    def merge(self, number: int, method: str = "merge") -> str:
        """A release owner approves and merges; returns the merge commit (what the push event carries)."""
        self.github.approve(number, REVIEWER_TOKEN)
        status, body = self.api("PUT", f"/pulls/{number}/merge", {"merge_method": method})
        assert status == 200, (status, body)
        return body["sha"]

    def api(self, method: str, path: str, data: Any = None, token: str = REVIEWER_TOKEN) -> tuple[int, Any]:
        import requests

        answer = requests.request(
            method,
            f"{self.github.repo_url}{path}",
            json=data,
            headers={"Authorization": f"token {token}", "Accept": "application/vnd.github+json"},
            timeout=30,
        )
        return answer.status_code, (answer.json() if answer.content else None)

    def pulls(self) -> list[dict]:
        status, body = self.api("GET", "/pulls?state=all&per_page=100")
        assert status == 200, body
        return sorted(body, key=lambda pr: pr["number"])

    def pull_files(self, number: int) -> list[str]:
        status, body = self.api("GET", f"/pulls/{number}/files")
        assert status == 200, body
        return sorted(item["filename"] for item in body)

    def main(self) -> str:
        return git(self.bare, "rev-parse", "refs/heads/main")

    def show(self, ref: str, path: str) -> str | None:
        return self.github.show(ref, path)

    # --- the simulated systems' state ---------------------------------------------------------------------

    def registry_versions(self, env: str, model_name: str) -> list[dict[str, Any]]:
        """Every version in the environment's MLflow (read as the cluster, straight from the server)."""
        from mlflow import MlflowClient

        client = MlflowClient(tracking_uri=self.mlflow[env].url, registry_uri=self.mlflow[env].url)
        # search does not return aliases: read each version
        found = [
            client.get_model_version(model_name, v.version)
            for v in client.search_model_versions(f"name = '{model_name}'")
        ]
        return sorted(
            (
                {"version": int(v.version), "source": v.source, "tags": dict(v.tags), "aliases": list(v.aliases)}
                for v in found
            ),
            key=lambda v: v["version"],
        )

    def objects(self, env: str, prefix: str = "") -> list[str]:
        bucket = self.buckets[env]
        if self.store == "s3":
            return self.s3.keys_in(bucket, prefix)
        return sorted(blob.name for blob in self.gcs.client().list_blobs(bucket, prefix=prefix))

    def served(self, env: str):
        """What KServe serves in the environment's namespace: (storage URI, URL, digest) or None."""
        return self.kserve.served.get((self.namespaces[env], self.project))

    def outputs_of(self, result: JobResult) -> dict[str, str]:
        return result.outputs


@contextmanager
def simulation(workdir: Path, source: Path, store: str) -> Iterator[ClusterSimulation]:
    with ClusterSimulation(workdir, source, store) as sim:
        yield sim


# --- the same jobs through act --------------------------------------------------------------------------


def act_settings(sim: ClusterSimulation, identity: str, workspace: Path) -> dict[str, dict[str, str]]:
    """What GitHub would give the run: repository variables, the environment's secrets, and (standing
    in for OIDC and the App token steps act skips) the identity's credentials as job environment."""
    environ = sim.job_environment(identity, "", workspace)
    passed = ("AWS_", "STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT", "GITHUB_API_URL")
    env = {key: value for key, value in environ.items() if key.startswith(passed)}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env["IMAGE_DIGEST_STANDIN"] = sim.image_digest
    # Environment secrets, as the workflows read them (`secrets.MLFLOW_TRACKING_TOKEN`, ...)
    secrets = {"KFP_TOKEN": environ.get("KFP_TOKEN", "none"), "MLFLOW_TRACKING_TOKEN": environ["MLFLOW_TRACKING_TOKEN"]}
    if identity in ("staging", "production"):
        env["GITHUB_TOKEN"] = APP_TOKEN  # the App token step's output, which GH_TOKEN falls back to
        secrets["ARGOCD_AUTH_TOKEN"] = sim.argocd_tokens[identity]
    else:
        secrets["GITHUB_TOKEN"] = PR_TOKEN  # github.token of a pull_request run
    return {"vars": {"ARGOCD_SERVER": sim.argocd.url}, "secrets": secrets, "env": env}


def act_run(
    sim: ClusterSimulation,
    identity: str,
    sha: str,
    workflow: str,
    event: str,
    payload: dict[str, Any] | None = None,
    inputs: dict[str, str] | None = None,
    job: str | None = None,
):
    """Run `.github/workflows/<workflow>` for `event` through act, in a checkout of `sha`, as `identity`."""
    from mlrail import workflows

    name = f"{len(sim.jobs):02d}-act-{identity}"
    workspace = sim.checkout(sha, name)
    # act names the repository (github.repository) from the origin remote
    git(workspace, "remote", "set-url", "origin", f"https://github.com/{REPOSITORY}.git")
    repository = {"full_name": REPOSITORY, "default_branch": "main", "name": REPOSITORY.split("/")[1]}
    if payload is None and event == "push":
        before = git(workspace, "rev-parse", f"{sha}^")
        payload = {"ref": "refs/heads/main", "before": before, "after": sha, "head_commit": {"id": sha}}
    payload = {"repository": repository, **(payload or {}), **({"inputs": inputs} if inputs else {})}
    loaded = workflows.Workflow.load(workspace / ".github" / "workflows" / workflow)
    started = time.perf_counter()
    run = workflows.run_act(
        workspace,
        loaded,
        event,
        payload,
        inputs or {},
        timeout=900,
        backend="cluster",
        job=job,
        settings=act_settings(sim, identity, workspace),
    )
    log = run.log.read_text(errors="replace")
    result = JobResult(
        identity, sha, (f"act {event} {workflow}",), run.returncode, log, round(time.perf_counter() - started, 1), {}
    )
    sim.jobs.append(result)
    return result, run
