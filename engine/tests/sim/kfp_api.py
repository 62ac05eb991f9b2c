"""A Kubeflow Pipelines API server for the cluster simulation, on 127.0.0.1.

It answers the v2beta1 REST endpoints `kfp.Client` calls, shaped as KFP's published swagger
(backend/api/v2beta1/swagger: pipeline, pipeline.upload, experiment, run, artifacts, healthz),
and it **executes runs**: the compiled IR's root DAG is walked in dependency order; an importer
task registers its artifact URI; a container task runs its command for real in a subprocess of
this interpreter (the venv plays the project image, as kfp.local's SubprocessRunner does), with
the executor input KFP's driver would build. As KFP's launcher does, input artifacts are
downloaded from the object store first and output artifacts are uploaded after, under
`<pipeline_root>/<pipeline name>/<run id>/<task>/<execution id>/<output>` in the S3 (or GCS)
emulator. The run then reports its state and, in `run_details.task_details`, each task's output
artifact ids, whose URIs the artifact service answers.

Multi-user semantics (the default): pipelines uploaded without a namespace are shared and are
what a list without a namespace returns; experiments belong to a namespace.

Not simulated: caching, retries of tasks, sub-DAGs, loops and conditions, recurring runs.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.parser
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import yaml

API = "/apis/v2beta1"
# google.rpc codes KFP answers with, and their HTTP statuses
INVALID, NOT_FOUND, EXISTS, UNAUTHENTICATED = 3, 5, 6, 16
HTTP_OF = {INVALID: 400, NOT_FOUND: 404, EXISTS: 409, UNAUTHENTICATED: 401}
FINAL = ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED")


class ApiError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- object stores the runs read and write ----------------------------------------------------


class S3Objects:
    """Artifacts in the S3 emulator (boto3 against its endpoint)."""

    scheme = "s3"

    def __init__(self, endpoint: str):
        import boto3

        self.client = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
        ).client("s3", endpoint_url=endpoint)

    def _keys(self, bucket: str, prefix: str) -> list[str]:
        found = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found += [item["Key"] for item in page.get("Contents", [])]
        return found

    def download(self, bucket: str, key: str, target: Path) -> None:
        below = self._keys(bucket, key.rstrip("/") + "/")
        if below:  # a directory artifact
            for item in below:
                local = target / item[len(key.rstrip("/")) + 1 :]
                local.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(bucket, item, str(local))
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        self.client.download_file(bucket, key, str(target))

    def upload_file(self, source: Path, bucket: str, key: str) -> None:
        self.client.upload_file(str(source), bucket, key)

    def signed_url(self, bucket: str, key: str) -> str | None:
        return self.client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=15)


class GcsObjects:
    """Artifacts in the GCS emulator (google-cloud-storage against its endpoint)."""

    scheme = "gs"

    def __init__(self, endpoint: str):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        self.client = storage.Client(
            project="mlrail-test", credentials=AnonymousCredentials(), client_options={"api_endpoint": endpoint}
        )

    def download(self, bucket: str, key: str, target: Path) -> None:
        below = list(self.client.list_blobs(bucket, prefix=key.rstrip("/") + "/"))
        if below:
            for blob in below:
                local = target / blob.name[len(key.rstrip("/")) + 1 :]
                local.parent.mkdir(parents=True, exist_ok=True)
                blob.download_to_filename(str(local))
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        self.client.bucket(bucket).blob(key).download_to_filename(str(target))

    def upload_file(self, source: Path, bucket: str, key: str) -> None:
        self.client.bucket(bucket).blob(key).upload_from_filename(str(source))

    def signed_url(self, bucket: str, key: str) -> str | None:
        return None  # the emulator cannot sign


# --- the server -------------------------------------------------------------------------------


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> dict:
        try:
            value = json.loads(self.body or b"{}")
        except ValueError:
            raise ApiError(INVALID, "the request body is not JSON") from None
        if not isinstance(value, dict):
            raise ApiError(INVALID, "the request body must be a JSON object")
        return value


@dataclass
class Fault:
    """Answer the next `count` requests matching `method` with `status` (a 5xx storm, a throttle)."""

    method: str
    status: int
    count: int = 1


class KfpEmulator:
    def __init__(
        self,
        workdir: Path,
        stores: dict[str, Any],
        token: str | None = None,
        multi_user: bool = True,
        task_timeout: float = 300.0,
    ):
        self.workdir = Path(workdir)
        self.stores = stores  # scheme -> S3Objects / GcsObjects
        self.token = token
        self.multi_user = multi_user
        self.task_timeout = task_timeout
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}  # id -> version (with "_spec")
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.artifacts: dict[str, dict] = {}
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.delay_s = 0.0  # answer every request this late (a slow or hung server)
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._released = threading.Event()
        self._released.set()
        self._workers: list[threading.Thread] = []
        self._httpd: ThreadingHTTPServer | None = None
        self.url = ""

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> KfpEmulator:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                parsed = urlparse(self.path)
                request = Request(
                    self.command,
                    parsed.path,
                    parse_qs(parsed.query, keep_blank_values=True),
                    {k.lower(): v for k, v in self.headers.items()},
                    self.rfile.read(length) if length else b"",
                )
                status, body = emulator.handle(request)
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass

            do_GET = do_POST = do_DELETE = do_PATCH = _serve  # noqa: N815

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_port}"
        threading.Thread(target=self._httpd.serve_forever, name="kfp-emulator", daemon=True).start()
        return self

    def stop(self) -> None:
        self._released.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for worker in self._workers:
            worker.join(timeout=self.task_timeout)

    def __enter__(self) -> KfpEmulator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @contextmanager
    def hold_runs(self) -> Iterator[None]:
        """Runs created meanwhile stay RUNNING until the block ends (a run that outlasts its timeout)."""
        self._released.clear()
        try:
            yield
        finally:
            self._released.set()

    def wait_idle(self, timeout: float = 120.0) -> None:
        for worker in list(self._workers):
            worker.join(timeout=timeout)

    # --- dispatch ----------------------------------------------------------------------------

    ROUTES: list[tuple[str, str, str]] = [
        ("GET", r"/healthz", "healthz"),
        ("POST", r"/pipelines/upload", "upload_pipeline"),
        ("POST", r"/pipelines/upload_version", "upload_version"),
        ("GET", r"/pipelines", "list_pipelines"),
        ("GET", r"/pipelines/names/(?P<name>[^/]+)", "get_pipeline_by_name"),
        ("GET", r"/pipelines/(?P<pipeline_id>[^/]+)", "get_pipeline"),
        ("GET", r"/pipelines/(?P<pipeline_id>[^/]+)/versions", "list_versions"),
        ("GET", r"/pipelines/(?P<pipeline_id>[^/]+)/versions/(?P<version_id>[^/]+)", "get_version"),
        ("POST", r"/experiments", "create_experiment"),
        ("GET", r"/experiments", "list_experiments"),
        ("GET", r"/experiments/(?P<experiment_id>[^/:]+)", "get_experiment"),
        ("POST", r"/runs", "create_run"),
        ("GET", r"/runs", "list_runs"),
        ("GET", r"/runs/(?P<run_id>[^/:]+)", "get_run"),
        ("GET", r"/artifacts/(?P<artifact_id>[^/]+)", "get_artifact"),
    ]

    def handle(self, request: Request) -> tuple[int, dict]:
        with self._lock:
            self.requests.append(request)
            fault = next((f for f in self.faults if f.method in (request.method, "*") and f.count > 0), None)
            if fault is not None:
                fault.count -= 1
                return fault.status, {"error": "injected fault", "code": 14, "message": "injected fault"}
        if self.delay_s:
            time.sleep(self.delay_s)
        try:
            if self.token and request.headers.get("authorization") != f"Bearer {self.token}":
                raise ApiError(UNAUTHENTICATED, "Request header error: there is no user identity header.")
            for method, pattern, name in self.ROUTES:
                match = re.fullmatch(API + pattern, request.path)
                if match and method == request.method:
                    with self._lock:
                        return 200, getattr(self, name)(request, **match.groupdict())
            raise ApiError(NOT_FOUND, f"Not Found: {request.method} {request.path}")
        except ApiError as exc:
            return HTTP_OF.get(exc.code, 500), {"error": exc.message, "code": exc.code, "message": exc.message}
        except Exception as exc:  # a bug in the emulator: say so as the API would
            message = f"Internal error: {type(exc).__name__}: {exc}"
            return 500, {"error": message, "code": 13, "message": message, "details": traceback.format_exc()}

    def _id(self) -> str:
        return f"{next(self._ids):08d}-sim"

    # --- healthz -----------------------------------------------------------------------------

    def healthz(self, request: Request) -> dict:
        return {"commit_sha": "simulation", "tag_name": "2.5.0", "multi_user": self.multi_user}

    # --- pipelines ---------------------------------------------------------------------------

    @staticmethod
    def _upload(request: Request) -> bytes:
        content_type = request.headers.get("content-type", "")
        if "multipart/form-data" not in content_type:
            raise ApiError(INVALID, "Failed to upload a pipeline: expected a multipart/form-data upload")
        message = email.parser.BytesParser().parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + request.body)
        for part in message.get_payload():
            if part.get_param("name", header="content-disposition") == "uploadfile":
                return part.get_payload(decode=True)
        raise ApiError(INVALID, "Failed to upload a pipeline: the form has no uploadfile")

    @staticmethod
    def _parse_spec(data: bytes) -> dict:
        try:
            spec = yaml.safe_load(data)
        except yaml.YAMLError as exc:
            raise ApiError(INVALID, f"Failed to parse the pipeline spec: {exc}") from None
        if not isinstance(spec, dict) or "pipelineInfo" not in spec or "root" not in spec:
            raise ApiError(INVALID, "Failed to parse the pipeline spec: not a KFP v2 IR (pipelineInfo, root)")
        return spec

    def _namespace(self, value: str | None) -> str:
        return (value or "") if self.multi_user else ""

    def upload_pipeline(self, request: Request) -> dict:
        spec = self._parse_spec(self._upload(request))
        name = request.arg("display_name") or request.arg("name") or spec["pipelineInfo"]["name"]
        namespace = self._namespace(request.arg("namespace"))
        if any(p["display_name"] == name and p["namespace"] == namespace for p in self.pipelines.values()):
            raise ApiError(
                EXISTS, f"Failed to create a pipeline: pipeline with name {name!r} and namespace {namespace!r} exists"
            )
        pipeline_id = self._id()
        pipeline = {
            "pipeline_id": pipeline_id,
            "display_name": name,
            "name": request.arg("name") or name,
            "description": request.arg("description") or "",
            "created_at": now(),
            "namespace": namespace,
        }
        self.pipelines[pipeline_id] = pipeline
        self._add_version(pipeline_id, name, request.arg("description") or "", spec)
        return pipeline

    def upload_version(self, request: Request) -> dict:
        spec = self._parse_spec(self._upload(request))
        pipeline_id = request.arg("pipelineid") or ""
        if pipeline_id not in self.pipelines:
            raise ApiError(NOT_FOUND, f"Failed to upload a pipeline version: pipeline {pipeline_id!r} not found")
        name = request.arg("display_name") or request.arg("name")
        if not name:
            raise ApiError(INVALID, "Failed to upload a pipeline version: a version name is required")
        if any(v["pipeline_id"] == pipeline_id and v["display_name"] == name for v in self.versions.values()):
            raise ApiError(EXISTS, f"Failed to create a pipeline version: version {name!r} already exists")
        return self._public(self._add_version(pipeline_id, name, request.arg("description") or "", spec))

    def _add_version(self, pipeline_id: str, name: str, description: str, spec: dict) -> dict:
        version_id = self._id()
        self.versions[version_id] = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": version_id,
            "display_name": name,
            "name": name,
            "description": description,
            "created_at": now(),
            "pipeline_spec": spec,
        }
        return self.versions[version_id]

    def list_pipelines(self, request: Request) -> dict:
        namespace = self._namespace(request.arg("namespace"))
        found = [p for p in self.pipelines.values() if p["namespace"] == namespace]
        return self._page(request, found, "pipelines")

    def get_pipeline(self, request: Request, pipeline_id: str) -> dict:
        if pipeline_id not in self.pipelines:
            raise ApiError(NOT_FOUND, f"Pipeline {pipeline_id} not found")
        return self.pipelines[pipeline_id]

    def get_pipeline_by_name(self, request: Request, name: str) -> dict:
        namespace = self._namespace(request.arg("namespace"))
        for pipeline in self.pipelines.values():
            if pipeline["name"] == name and pipeline["namespace"] == namespace:
                return pipeline
        raise ApiError(NOT_FOUND, f"Pipeline {name} not found")

    def list_versions(self, request: Request, pipeline_id: str) -> dict:
        if pipeline_id not in self.pipelines:
            raise ApiError(NOT_FOUND, f"Pipeline {pipeline_id} not found")
        found = [self._public(v) for v in self.versions.values() if v["pipeline_id"] == pipeline_id]
        return self._page(request, found, "pipeline_versions")

    def get_version(self, request: Request, pipeline_id: str, version_id: str) -> dict:
        version = self.versions.get(version_id)
        if version is None or version["pipeline_id"] != pipeline_id:
            raise ApiError(NOT_FOUND, f"Pipeline version {version_id} not found")
        return version

    @staticmethod
    def _public(version: dict) -> dict:
        return {k: v for k, v in version.items() if k != "pipeline_spec"}  # lists leave the spec out

    # --- experiments -------------------------------------------------------------------------

    def create_experiment(self, request: Request) -> dict:
        body = request.json()
        name = body.get("display_name")
        if not name:
            raise ApiError(INVALID, "Invalid input error: experiment display_name is required")
        namespace = self._namespace(body.get("namespace"))
        if self.multi_user and not namespace:
            raise ApiError(INVALID, "Invalid input error: in multi-user mode an experiment needs a namespace")
        if any(e["display_name"] == name and e["namespace"] == namespace for e in self.experiments.values()):
            raise ApiError(EXISTS, f"Failed to create a new experiment: experiment {name!r} already exists")
        experiment_id = self._id()
        self.experiments[experiment_id] = {
            "experiment_id": experiment_id,
            "display_name": name,
            "description": body.get("description") or "",
            "created_at": now(),
            "namespace": namespace,
            "storage_state": "AVAILABLE",
        }
        return self.experiments[experiment_id]

    def list_experiments(self, request: Request) -> dict:
        namespace = self._namespace(request.arg("namespace"))
        found = [e for e in self.experiments.values() if e["namespace"] == namespace]
        return self._page(request, found, "experiments")

    def get_experiment(self, request: Request, experiment_id: str) -> dict:
        if experiment_id not in self.experiments:
            raise ApiError(NOT_FOUND, f"Experiment {experiment_id} not found")
        return self.experiments[experiment_id]

    # --- runs --------------------------------------------------------------------------------

    def create_run(self, request: Request) -> dict:
        body = request.json()
        if body.get("experiment_id") not in self.experiments:
            raise ApiError(NOT_FOUND, f"Failed to create a run: experiment {body.get('experiment_id')!r} not found")
        if not body.get("display_name"):
            raise ApiError(INVALID, "Failed to create a run: display_name is required")
        reference = body.get("pipeline_version_reference") or {}
        if reference:
            version = self.versions.get(reference.get("pipeline_version_id", ""))
            if version is None or version["pipeline_id"] != reference.get("pipeline_id"):
                raise ApiError(NOT_FOUND, f"Failed to create a run: pipeline version {reference} not found")
            spec = version["pipeline_spec"]
        elif isinstance(body.get("pipeline_spec"), dict):
            spec = body["pipeline_spec"]
        else:
            raise ApiError(INVALID, "Failed to create a run: pipeline_version_reference or pipeline_spec is required")
        config = body.get("runtime_config") or {}
        parameters = self._parameters(spec, config.get("parameters") or {})
        root = config.get("pipeline_root") or ""
        if urlparse(root).scheme not in self.stores:
            raise ApiError(
                INVALID, f"Failed to create a run: pipeline_root {root!r} is not in {sorted(self.stores)} storage"
            )
        run_id = self._id()
        run = {
            "experiment_id": body["experiment_id"],
            "run_id": run_id,
            "display_name": body["display_name"],
            "storage_state": "AVAILABLE",
            "description": body.get("description") or "",
            "runtime_config": {"parameters": config.get("parameters") or {}, "pipeline_root": root},
            "service_account": body.get("service_account") or "pipeline-runner",
            "created_at": now(),
            "scheduled_at": now(),
            "state": "PENDING",
            "state_history": [{"update_time": now(), "state": "PENDING"}],
            "run_details": {"task_details": []},
        }
        if reference:
            run["pipeline_version_reference"] = reference
        else:
            run["pipeline_spec"] = spec
        self.runs[run_id] = run
        worker = threading.Thread(target=self._execute, args=(run, spec, parameters), daemon=True)
        self._workers.append(worker)
        worker.start()
        return run

    def list_runs(self, request: Request) -> dict:
        experiment_id = request.arg("experiment_id")
        namespace = self._namespace(request.arg("namespace"))
        found = [
            r
            for r in self.runs.values()
            if (r["experiment_id"] == experiment_id if experiment_id else self._run_namespace(r) == namespace)
        ]
        return self._page(request, found, "runs")

    def _run_namespace(self, run: dict) -> str:
        return self.experiments[run["experiment_id"]]["namespace"]

    def get_run(self, request: Request, run_id: str) -> dict:
        if run_id not in self.runs:
            raise ApiError(NOT_FOUND, f"Run {run_id} not found")
        return self.runs[run_id]

    def get_artifact(self, request: Request, artifact_id: str) -> dict:
        if artifact_id not in self.artifacts:
            raise ApiError(NOT_FOUND, f"Artifact {artifact_id} not found")
        artifact = {k: v for k, v in self.artifacts[artifact_id].items() if not k.startswith("_")}
        if request.arg("view") == "DOWNLOAD":
            parsed = urlparse(artifact["uri"])
            store = self.stores.get(parsed.scheme)
            url = store.signed_url(parsed.netloc, parsed.path.lstrip("/")) if store else None
            if url:
                artifact["download_url"] = url
        return artifact

    # --- filters and pages (filter.proto) ----------------------------------------------------

    def _page(self, request: Request, items: list[dict], key: str) -> dict:
        items = [item for item in items if self._matches(item, request.arg("filter"))]
        sort_by = (request.arg("sort_by") or "").split()
        if sort_by:
            field_name = {"name": "display_name"}.get(sort_by[0], sort_by[0])
            items.sort(key=lambda item: str(item.get(field_name, "")), reverse=sort_by[-1:] == ["desc"])
        size = int(request.arg("page_size") or 20) or 20
        start = int(request.arg("page_token") or 0)
        page = items[start : start + size]
        result: dict[str, Any] = {"total_size": len(items)}
        if page:
            result[key] = page
        if start + size < len(items):
            result["next_page_token"] = str(start + size)
        return result

    @staticmethod
    def _matches(item: dict, raw: str | None) -> bool:
        if not raw:
            return True
        try:
            predicates = json.loads(raw).get("predicates", [])
        except (ValueError, AttributeError):
            raise ApiError(INVALID, f"Invalid input error: filter {raw!r} is not a JSON Filter") from None
        for predicate in predicates:
            key = {"name": "display_name"}.get(predicate.get("key"), predicate.get("key"))
            value = next(
                (predicate[k] for k in ("stringValue", "string_value", "intValue", "int_value") if k in predicate),
                None,
            )
            operation = predicate.get("operation") or predicate.get("op")
            actual = item.get(key)
            if operation in ("EQUALS", 1):
                ok = actual == value
            elif operation in ("NOT_EQUALS", 2):
                ok = actual != value
            elif operation == "IS_SUBSTRING":
                ok = str(value) in str(actual)
            else:
                raise ApiError(INVALID, f"Invalid input error: filter operation {operation!r} is not supported")
            if not ok:
                return False
        return True

    # --- executing a run ---------------------------------------------------------------------

    def _parameters(self, spec: dict, given: dict) -> dict[str, Any]:
        declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
        unknown = sorted(set(given) - set(declared))
        if unknown:
            raise ApiError(
                INVALID,
                f"Failed to create a run: unrecognized input parameter(s) {unknown}; the pipeline declares "
                f"{sorted(declared)}",
            )
        values = {}
        for name, definition in declared.items():
            if name in given:
                values[name] = _cast(given[name], definition.get("parameterType"))
            elif "defaultValue" in definition:
                values[name] = _cast(definition["defaultValue"], definition.get("parameterType"))
            elif not definition.get("isOptional"):
                raise ApiError(INVALID, f"Failed to create a run: input parameter {name!r} is required")
        return values

    def _set_state(self, run: dict, state: str, error: str | None = None) -> None:
        with self._lock:
            run["state"] = state
            run["state_history"].append({"update_time": now(), "state": state})
            if state in FINAL:
                run["finished_at"] = now()
            if error:
                run["error"] = {"code": 2, "message": error}

    def _execute(self, run: dict, spec: dict, parameters: dict[str, Any]) -> None:
        self._set_state(run, "RUNNING")
        self._released.wait()
        try:
            self._run_dag(run, spec, parameters)
        except TaskFailed as exc:
            self._set_state(run, "FAILED", str(exc))
        except Exception as exc:  # the emulator itself failed: the run says why
            self._set_state(run, "FAILED", f"simulation error: {type(exc).__name__}: {exc}")
        else:
            self._set_state(run, "SUCCEEDED")

    def _run_dag(self, run: dict, spec: dict, parameters: dict[str, Any]) -> None:
        dag = spec["root"]["dag"]
        tasks = dag["tasks"]
        produced: dict[tuple[str, str], str] = {}  # (task, output key) -> artifact id
        out_params: dict[tuple[str, str], Any] = {}
        for task_name in _order(tasks):
            task = tasks[task_name]
            detail = self._task_detail(run, task_name, task)
            try:
                self._run_task(run, spec, task_name, task, parameters, produced, out_params, detail)
            except TaskFailed as exc:
                self._finish_task(detail, "FAILED", str(exc))
                raise
            self._finish_task(detail, "SUCCEEDED")
        root = self._task_detail(run, "root", {"taskInfo": {"name": "root"}})
        for name, output in (dag.get("outputs", {}).get("artifacts") or {}).items():
            selector = output["artifactSelectors"][0]
            artifact_id = produced[(selector["producerSubtask"], selector["outputArtifactKey"])]
            root["outputs"][name] = {"artifact_ids": [artifact_id]}
        self._finish_task(root, "SUCCEEDED")

    def _task_detail(self, run: dict, task_name: str, task: dict) -> dict:
        detail = {
            "run_id": run["run_id"],
            "task_id": self._id(),
            "display_name": task.get("taskInfo", {}).get("name", task_name),
            "create_time": now(),
            "start_time": now(),
            "state": "RUNNING",
            "execution_id": str(next(self._ids)),
            "inputs": {},
            "outputs": {},
        }
        with self._lock:
            run["run_details"]["task_details"].append(detail)
        return detail

    def _finish_task(self, detail: dict, state: str, error: str | None = None) -> None:
        with self._lock:
            detail["state"], detail["end_time"] = state, now()
            if error:
                detail["error"] = {"code": 2, "message": error}

    def _inputs(self, task: dict, parameters: dict, out_params: dict) -> dict[str, Any]:
        values = {}
        for name, source in (task.get("inputs", {}).get("parameters") or {}).items():
            if "componentInputParameter" in source:
                values[name] = parameters.get(source["componentInputParameter"])
            elif "runtimeValue" in source:
                constant = source["runtimeValue"].get("constant")
                values[name] = _unwrap(constant)
            elif "taskOutputParameter" in source:
                ref = source["taskOutputParameter"]
                values[name] = out_params[(ref["producerTask"], ref["outputParameterKey"])]
            else:
                raise TaskFailed(f"input parameter {name!r}: unsupported source {sorted(source)}")
        return values

    def _register(self, run: dict, uri: str, schema: dict, metadata: dict, reuse: bool = False) -> str:
        with self._lock:
            if reuse:
                for artifact_id, artifact in self.artifacts.items():
                    if artifact["uri"] == uri:
                        return artifact_id
            artifact_id = str(next(self._ids))
            parsed = urlparse(uri)
            self.artifacts[artifact_id] = {
                "artifact_id": artifact_id,
                "storage_provider": parsed.scheme,
                "storage_path": parsed.path.lstrip("/"),
                "uri": uri,
                "namespace": self._run_namespace(run),
                "artifact_type": schema.get("schemaTitle", "system.Artifact"),
                "created_at": now(),
                "last_updated_at": now(),
                "_schema": schema,
                "_metadata": metadata,
            }
            return artifact_id

    def _run_task(self, run, spec, task_name, task, parameters, produced, out_params, detail) -> None:
        component = spec["components"][task["componentRef"]["name"]]
        executor = spec["deploymentSpec"]["executors"][component["executorLabel"]]
        values = self._inputs(task, parameters, out_params)
        outputs = component.get("outputDefinitions", {})
        if "importer" in executor:
            importer = executor["importer"]
            source = importer["artifactUri"]
            uri = (
                values.get(source["runtimeParameter"])
                if "runtimeParameter" in source
                else _unwrap(source.get("constant"))
            )
            if not isinstance(uri, str) or not uri:
                raise TaskFailed(f"task {detail['display_name']!r}: the importer has no artifact URI")
            key = next(iter(outputs.get("artifacts", {})), "artifact")
            artifact_id = self._register(
                run, uri, importer.get("typeSchema", {}), {}, reuse=not importer.get("reimport")
            )
            produced[(task_name, key)] = artifact_id
            detail["outputs"][key] = {"artifact_ids": [artifact_id]}
            return
        if "container" not in executor:
            raise TaskFailed(f"task {detail['display_name']!r}: executor {sorted(executor)} is not simulated")
        self._run_container(
            run, spec, task_name, task, component, executor["container"], values, produced, out_params, detail
        )

    def _run_container(
        self, run, spec, task_name, task, component, container, values, produced, out_params, detail
    ) -> None:
        from kfp.local import placeholder_utils
        from kfp.local.subprocess_task_handler import replace_python_executable

        root = run["runtime_config"]["pipeline_root"].rstrip("/")
        pipeline_name = spec["pipelineInfo"]["name"]
        task_root = self.workdir / run["run_id"] / task_name
        shutil.rmtree(task_root, ignore_errors=True)
        (task_root / "outputs").mkdir(parents=True)
        definitions = component.get("inputDefinitions", {})
        parameter_values = {
            name: _cast(d["defaultValue"], d.get("parameterType"))
            for name, d in (definitions.get("parameters") or {}).items()
            if "defaultValue" in d
        }
        for name, value in values.items():
            kind = (definitions.get("parameters") or {}).get(name, {}).get("parameterType")
            parameter_values[name] = _cast(value, kind)
        artifacts_in = {}
        for name, source in (task.get("inputs", {}).get("artifacts") or {}).items():
            ref = source.get("taskOutputArtifact")
            if ref is None:
                raise TaskFailed(f"input artifact {name!r}: only task outputs are simulated")
            artifact_id = produced[(ref["producerTask"], ref["outputArtifactKey"])]
            artifact = self.artifacts[artifact_id]
            parsed = urlparse(artifact["uri"])
            local = task_root / "inputs" / name / (Path(parsed.path).name or name)
            # KFP's launcher downloads every input artifact before the user code starts.
            try:
                self.stores[parsed.scheme].download(parsed.netloc, parsed.path.lstrip("/"), local)
            except Exception as exc:
                raise TaskFailed(
                    f"task {detail['display_name']!r}: failed to download input artifact {name!r} from "
                    f"{artifact['uri']}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
                ) from None
            artifacts_in[name] = {
                "artifacts": [
                    {"name": name, "type": artifact["_schema"], "uri": str(local), "metadata": artifact["_metadata"]}
                ]
            }
            detail["inputs"][name] = {"artifact_ids": [artifact_id]}
        remote, artifacts_out = {}, {}
        for name, definition in (component.get("outputDefinitions", {}).get("artifacts") or {}).items():
            remote[name] = f"{root}/{pipeline_name}/{run['run_id']}/{task_name}/{detail['execution_id']}/{name}"
            local = task_root / "outputs" / name
            artifacts_out[name] = {
                "artifacts": [{"name": name, "type": definition["artifactType"], "uri": str(local), "metadata": {}}]
            }
        parameters_out = {
            name: {"outputFile": str(task_root / "outputs" / "parameters" / name)}
            for name in (component.get("outputDefinitions", {}).get("parameters") or {})
        }
        (task_root / "outputs" / "parameters").mkdir()
        executor_input = {
            "inputs": {"parameterValues": parameter_values, "artifacts": artifacts_in},
            "outputs": {
                "artifacts": artifacts_out,
                "parameters": parameters_out,
                "outputFile": str(task_root / "executor_output.json"),
            },
        }
        command = placeholder_utils.replace_placeholders(
            full_command=[*container.get("command", []), *container.get("args", [])],
            executor_input_dict=executor_input,
            pipeline_resource_name=pipeline_name,
            task_resource_name=task_name,
            pipeline_root=root,
            unique_pipeline_id=run["run_id"],
        )
        command = replace_python_executable(command, sys.executable)
        env = {**os.environ, **{e["name"]: e.get("value", "") for e in container.get("env", [])}}
        log = task_root / "log.txt"
        with open(log, "w") as handle:
            try:
                code = subprocess.run(
                    command, stdout=handle, stderr=subprocess.STDOUT, env=env, timeout=self.task_timeout, check=False
                ).returncode
            except subprocess.TimeoutExpired:
                code = -1
        if code != 0:
            tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
            raise TaskFailed(f"task {detail['display_name']!r} failed with exit code {code}: {tail}")
        written = task_root / "executor_output.json"
        executor_output = json.loads(written.read_text()) if written.is_file() else {}
        for name, value in (executor_output.get("parameterValues") or {}).items():
            out_params[(task_name, name)] = value
        for name, path in parameters_out.items():
            if (task_name, name) not in out_params and Path(path["outputFile"]).is_file():
                out_params[(task_name, name)] = Path(path["outputFile"]).read_text()
        for name, uri in remote.items():
            metadata = {}
            for artifact in (executor_output.get("artifacts", {}).get(name, {}) or {}).get("artifacts", []):
                metadata.update(artifact.get("metadata") or {})
            self._upload_output(task_root / "outputs" / name, uri, detail)
            schema = artifacts_out[name]["artifacts"][0]["type"]
            artifact_id = self._register(run, uri, schema, metadata)
            produced[(task_name, name)] = artifact_id
            detail["outputs"][name] = {"artifact_ids": [artifact_id]}

    def _upload_output(self, local: Path, uri: str, detail: dict) -> None:
        """As the launcher does: a file becomes the object at the URI, a directory the objects under it."""
        parsed = urlparse(uri)
        store, key = self.stores[parsed.scheme], parsed.path.lstrip("/")
        if local.is_file():
            store.upload_file(local, parsed.netloc, key)
        elif local.is_dir():
            for file in sorted(p for p in local.rglob("*") if p.is_file()):
                store.upload_file(file, parsed.netloc, f"{key}/{file.relative_to(local).as_posix()}")
        else:
            raise TaskFailed(f"task {detail['display_name']!r}: output artifact {local.name!r} was not written")


class TaskFailed(Exception):
    pass


def _order(tasks: dict[str, dict]) -> list[str]:
    """Tasks in dependency order (dependentTasks and the producers of their inputs)."""
    needs: dict[str, set[str]] = {}
    for name, task in tasks.items():
        deps = set(task.get("dependentTasks") or [])
        for kind in ("artifacts", "parameters"):
            for source in (task.get("inputs", {}).get(kind) or {}).values():
                for ref in ("taskOutputArtifact", "taskOutputParameter"):
                    if ref in source:
                        deps.add(source[ref]["producerTask"])
        needs[name] = deps
    ordered: list[str] = []
    while needs:
        ready = sorted(name for name, deps in needs.items() if deps <= set(ordered))
        if not ready:
            raise TaskFailed(f"the DAG has a cycle among {sorted(needs)}")
        ordered += ready
        for name in ready:
            del needs[name]
    return ordered


def _unwrap(constant: Any) -> Any:
    """An IR constant: a plain value, or a protobuf Value as JSON ({"stringValue": ...})."""
    if isinstance(constant, dict) and len(constant) == 1:
        ((kind, value),) = constant.items()
        if kind in ("stringValue", "numberValue", "boolValue", "structValue", "listValue"):
            return value
    return constant


def _cast(value: Any, parameter_type: str | None) -> Any:
    if value is None:
        return None
    if parameter_type == "NUMBER_INTEGER":
        return int(value)
    if parameter_type == "NUMBER_DOUBLE":
        return float(value)
    if parameter_type == "STRING":
        return str(value)
    if parameter_type == "BOOLEAN":
        return value if isinstance(value, bool) else str(value).lower() == "true"
    return value


# --- fixtures -----------------------------------------------------------------------------------

TOKEN = "kfp-test-token"  # noqa: S105 - a test bearer token


def kfp_emulator_fixture():
    """A pytest fixture: a KFP API emulator whose runs read and write the module's S3 emulator."""
    import pytest

    @pytest.fixture()
    def kfp_emulator(s3_emulator, tmp_path):
        with KfpEmulator(tmp_path / "kfp-runs", {"s3": S3Objects(s3_emulator.url)}, token=TOKEN) as emulator:
            yield emulator

    return kfp_emulator


def main(argv: list[str] | None = None) -> int:
    """Serve the emulator as its own process (for workflows run through act):
    `python -m sim.kfp_api --workdir DIR [--s3 URL] [--gcs URL] [--token T] [--port-file F]`."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(prog="python -m sim.kfp_api", description=main.__doc__)
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--s3", help="S3 emulator endpoint URL")
    parser.add_argument("--gcs", help="GCS emulator endpoint URL")
    parser.add_argument("--token", help="require this bearer token")
    parser.add_argument("--port-file", type=Path, help="write the server's URL here once it listens")
    args = parser.parse_args(argv)
    stores: dict[str, Any] = {}
    if args.s3:
        stores["s3"] = S3Objects(args.s3)
    if args.gcs:
        stores["gs"] = GcsObjects(args.gcs)
    if not stores:
        parser.error("give --s3 and/or --gcs: runs need an object store for their pipeline root")
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    with KfpEmulator(args.workdir, stores, token=args.token) as emulator:
        if args.port_file:
            args.port_file.write_text(emulator.url + "\n")
        print(emulator.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stopped.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
