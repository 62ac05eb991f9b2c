"""Kubeflow Pipelines through `kfp.Client`: upload a compiled pipeline as a version named by
the commit, run it in the environment's namespace and experiment, wait with a timeout, and
return the URIs of its output artifacts.

Idempotent by construction: an existing pipeline gets a new version, an existing version of
the same name and content is reused, and a run of the same name that already succeeded (or
is still running) is reused instead of starting another.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import Environment
from .http import ClusterCallError, JsonApi, Retry, Timeouts

SUCCEEDED = "SUCCEEDED"
FINISHED = frozenset({"SUCCEEDED", "FAILED", "SKIPPED", "CANCELED", "CANCELLED"})
TOKEN_VAR = "KFP_TOKEN"  # noqa: S105 - the variable name; bearer token for the KFP API (e.g. from the OIDC-federated identity)


@dataclass(frozen=True)
class PipelineVersion:
    pipeline_name: str
    pipeline_id: str
    version_id: str
    version_name: str
    content: str  # sha256 of the compiled YAML, recorded as the version's description
    created: bool  # False when the version already existed (a rerun)


@dataclass(frozen=True)
class ClusterRun:
    run_id: str
    name: str
    state: str
    outputs: dict[str, str] = field(default_factory=dict)  # "<task>/<output>" -> artifact URI
    artifact_ids: dict[str, str] = field(default_factory=dict)  # "<task>/<output>" -> artifact id
    reused: bool = False

    def output(self, name: str) -> str:
        """The URI of output `name` ("model", or "train/model" when ambiguous)."""
        return self.outputs[self._key(name)]

    def artifact_id(self, name: str) -> str:
        return self.artifact_ids[self._key(name)]

    def _key(self, name: str) -> str:
        if name in self.outputs:
            return name
        matches = [key for key in self.outputs if key.rsplit("/", 1)[-1] == name]
        # The root DAG re-exports pipeline outputs: the same artifact under two tasks is one output.
        if len({self.artifact_ids[key] for key in matches}) == 1:
            return matches[0]
        if len(matches) != 1:
            raise KeyError(f"run {self.run_id} has {len(matches)} outputs named {name!r}: {sorted(self.outputs)}")
        return matches[0]


def commit_sha(root: Path | None = None) -> str:
    """The commit a pipeline version is named by: GITHUB_SHA in CI, else HEAD."""
    sha = os.environ.get("GITHUB_SHA", "").strip()
    if sha:
        return sha
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ClusterCallError("cannot name the pipeline version: no GITHUB_SHA and `git rev-parse HEAD` failed")
    return result.stdout.strip()


def version_name(commit: str) -> str:
    return commit[:12]


def content_hash(path: Path | str) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def pipeline_name_of(path: Path | str) -> str:
    doc = yaml.safe_load(Path(path).read_text())
    try:
        return doc["pipelineInfo"]["name"]
    except (KeyError, TypeError):
        raise ClusterCallError(f"{path} is not a compiled KFP pipeline (no pipelineInfo.name)") from None


class KfpPipelines:
    """The Kubeflow Pipelines API of one environment."""

    def __init__(
        self,
        env: Environment,
        client: Any = None,
        request_timeout: float = 60.0,
        retry: Retry | None = None,
        poll_seconds: float = 10.0,
    ):
        self.env = env
        self.endpoint = env.cluster.kfp_endpoint
        self.request_timeout = request_timeout
        self.retry = retry or Retry()
        self.poll_seconds = poll_seconds
        self.client = client or self._connect()
        self._bound_http_policy()

    # --- connection -----------------------------------------------------------------------

    def _connect(self):
        import kfp

        with warnings.catch_warnings(), _quiet():
            warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP >= 2.0.0-beta.2"
            return kfp.Client(
                host=self.endpoint,
                namespace=self.env.namespace,
                existing_token=os.environ.get(TOKEN_VAR) or None,
            )

    def _bound_http_policy(self) -> None:
        """kfp.Client sends every request without a timeout and never retries: add both.

        Reads (GET) retry on 5xx and connection errors; writes only when the connection was
        refused (the request never reached the server)."""
        import urllib3

        api_client = self.client._run_api.api_client  # one ApiClient is shared by every service API
        rest = api_client.rest_client
        rest.pool_manager.connection_pool_kw["retries"] = urllib3.Retry(
            total=self.retry.attempts - 1,
            connect=self.retry.attempts - 1,
            read=0,
            status=self.retry.attempts - 1,
            backoff_factor=self.retry.backoff / 2,
            backoff_max=self.retry.max_backoff,
            status_forcelist=(500, 502, 503, 504),
            allowed_methods=frozenset({"GET"}),
            raise_on_status=False,
        )
        if getattr(rest, "_mlops_timeout", None) is None:
            original = rest.request

            def request(*args, _request_timeout=None, **kwargs):
                return original(*args, _request_timeout=_request_timeout or (10.0, self.request_timeout), **kwargs)

            rest.request = request
        rest._mlops_timeout = self.request_timeout
        rest.pool_manager.clear()  # pools made from now on carry the retry policy

    def _call(self, what: str, fn, *args, **kwargs):
        """Run one kfp call; any failure becomes one sentence naming environment and endpoint."""
        from kfp_server_api.exceptions import ApiException

        try:
            with _quiet():
                return fn(*args, **kwargs)
        except ApiException as exc:
            detail = _api_message(exc)
            raise ClusterCallError(
                f"Kubeflow Pipelines ({self.env.name}) {self.endpoint}: {what} failed: {exc.status} {detail}",
                status=exc.status,
            ) from exc
        except Exception as exc:  # urllib3 MaxRetryError, timeouts, DNS
            if isinstance(exc, ClusterCallError):
                raise
            reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise ClusterCallError(
                f"Kubeflow Pipelines ({self.env.name}) {self.endpoint}: {what} failed: {reason}"
            ) from exc

    # --- pipelines and versions -----------------------------------------------------------

    def _named(self, what: str, list_call, items: str, name: str, **kwargs) -> list:
        """Objects of a KFP list call whose display name is exactly `name` (the API filter is a hint)."""
        predicate = {"operation": "EQUALS", "key": "display_name", "stringValue": name}
        result = self._call(
            f"looking up {what} {name!r}",
            list_call,
            filter=json.dumps({"predicates": [predicate]}),
            page_size=10,
            **kwargs,
        )
        return [item for item in (getattr(result, items) or []) if item.display_name == name]

    def find_pipeline(self, name: str) -> str | None:
        pipelines = self._named("pipeline", self.client.list_pipelines, "pipelines", name, namespace=self.env.namespace)
        return pipelines[0].pipeline_id if pipelines else None

    def find_version(self, pipeline_id: str, name: str):
        versions = self._named(
            "pipeline version", self.client.list_pipeline_versions, "pipeline_versions", name, pipeline_id=pipeline_id
        )
        return versions[0] if versions else None

    def upload(self, package: Path | str, version: str) -> PipelineVersion:
        """Upload `package` as version `version` of its pipeline (creating the pipeline first)."""
        name = pipeline_name_of(package)
        content = content_hash(package)
        pipeline_id = self.find_pipeline(name)
        if pipeline_id is None:
            # First upload: the pipeline is created with an initial version of its own name;
            # the commit-named version below is the one every run references.
            created = self._call(
                f"creating pipeline {name!r}",
                self.client.upload_pipeline,
                pipeline_package_path=str(package),
                pipeline_name=name,
                description=f"{name}: versions are named by commit",
                namespace=self.env.namespace,
            )
            pipeline_id = created.pipeline_id
        existing = self.find_version(pipeline_id, version)
        if existing is not None:
            return self._reuse(name, pipeline_id, existing, version, content)
        try:
            uploaded = self._call(
                f"uploading version {version!r} of pipeline {name!r}",
                self.client.upload_pipeline_version,
                pipeline_package_path=str(package),
                pipeline_version_name=version,
                pipeline_id=pipeline_id,
                description=content,
            )
        except ClusterCallError as exc:
            # Uploaded concurrently (409 AlreadyExists): converge on the existing version.
            existing = self.find_version(pipeline_id, version) if exc.status in (409, 500) else None
            if existing is None:
                raise
            return self._reuse(name, pipeline_id, existing, version, content)
        return PipelineVersion(name, pipeline_id, uploaded.pipeline_version_id, version, content, created=True)

    def _reuse(self, name: str, pipeline_id: str, existing, version: str, content: str) -> PipelineVersion:
        recorded = (existing.description or "").strip()
        if recorded and recorded != content:
            raise ClusterCallError(
                f"Kubeflow Pipelines ({self.env.name}) {self.endpoint}: version {version!r} of pipeline {name!r} "
                f"already exists with different content ({recorded[:19]}… vs {content[:19]}…); "
                "a commit names exactly one compiled pipeline, so recompile with the same PROJECT_IMAGE"
            )
        return PipelineVersion(name, pipeline_id, existing.pipeline_version_id, version, content, created=False)

    # --- runs -----------------------------------------------------------------------------

    def experiment_id(self, name: str) -> str:
        experiment = self._call(
            f"creating experiment {name!r}", self.client.create_experiment, name=name, namespace=self.env.namespace
        )
        return experiment.experiment_id

    def find_run(self, experiment_id: str, name: str):
        runs = self._named(
            "run", self.client.list_runs, "runs", name, experiment_id=experiment_id, sort_by="created_at desc"
        )
        runs = [r for r in runs if (r.state or "").upper() != "FAILED"]
        return runs[0] if runs else None

    def run(
        self,
        version: PipelineVersion,
        arguments: dict[str, Any],
        run_name: str,
        experiment: str,
        timeout: float,
        pipeline_root: str | None = None,
    ) -> ClusterRun:
        """Run `version` and wait for it; a rerun reuses a run of the same name unless it failed."""
        experiment_id = self.experiment_id(experiment)
        existing = self.find_run(experiment_id, run_name)
        if existing is not None:
            run_id, reused = existing.run_id, True
        else:
            created = self._call(
                f"starting run {run_name!r}",
                self.client.run_pipeline,
                experiment_id=experiment_id,
                job_name=run_name,
                params=arguments,
                pipeline_id=version.pipeline_id,
                version_id=version.version_id,
                pipeline_root=pipeline_root,
            )
            run_id, reused = created.run_id, False
        finished = self.wait(run_id, run_name, timeout)
        state = (finished.state or "").upper()
        if state != SUCCEEDED:
            message = getattr(finished.error, "message", None) or "no error message"
            raise ClusterCallError(
                f"Kubeflow Pipelines ({self.env.name}) {self.endpoint}: run {run_name!r} ({run_id}) ended {state}: "
                f"{message}"
            )
        outputs, ids = self.outputs(finished)
        return ClusterRun(run_id, run_name, state, outputs, ids, reused)

    def wait(self, run_id: str, run_name: str, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            run = self._call(f"reading run {run_name!r}", self.client.get_run, run_id)
            if (run.state or "").upper() in FINISHED:
                return run
            if time.monotonic() >= deadline:
                raise ClusterCallError(
                    f"Kubeflow Pipelines ({self.env.name}) {self.endpoint}: run {run_name!r} ({run_id}) did not "
                    f"finish within {timeout:g}s (state {run.state}); it keeps running, rerun to wait for it again"
                )
            time.sleep(min(self.poll_seconds, max(0.0, deadline - time.monotonic())))

    def outputs(self, run) -> tuple[dict[str, str], dict[str, str]]:
        uris, ids = {}, {}
        for task in (run.run_details.task_details if run.run_details else None) or []:
            for output, artifacts in (task.outputs or {}).items():
                for artifact_id in artifacts.artifact_ids or []:
                    key = f"{task.display_name}/{output}"
                    ids[key] = str(artifact_id)
                    uris[key] = self.artifact(str(artifact_id))["uri"]
        return uris, ids

    # --- artifacts (GET /apis/v2beta1/artifacts/{id}; not wrapped by kfp_server_api 2.17) ----

    def artifact(self, artifact_id: str, download: bool = False) -> dict[str, Any]:
        api_client = self.client._run_api.api_client
        return self._call(
            f"reading artifact {artifact_id}",
            api_client.call_api,
            "/apis/v2beta1/artifacts/{artifact_id}",
            "GET",
            path_params={"artifact_id": artifact_id},
            query_params=[("view", "DOWNLOAD" if download else "BASIC")],
            header_params={"Accept": "application/json"},
            response_type="object",
            auth_settings=["Bearer"],
            _return_http_data_only=True,
        )

    def read_artifact(self, artifact_id: str, max_bytes: int = 256 * 1024 * 1024) -> bytes:
        """The artifact's content through its signed download URL."""
        url = self.artifact(artifact_id, download=True).get("download_url")
        if not url:
            raise ClusterCallError(
                f"Kubeflow Pipelines ({self.env.name}) {self.endpoint}: artifact {artifact_id} has no download URL; "
                "enable signed URLs in the KFP API server"
            )
        store = JsonApi("artifact store", self.env.name, url, timeouts=Timeouts(read_s=self.request_timeout), retry=self.retry)
        response = store.request("GET", url, stream=True)
        chunks, size = [], 0
        for chunk in response.iter_content(1 << 20):
            size += len(chunk)
            if size > max_bytes:
                raise ClusterCallError(f"artifact {artifact_id} in {self.env.name} is larger than {max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


# --- the runner's cluster branch ------------------------------------------------------------


def _run_name(pipeline: str, env: Environment, version: str, arguments: dict[str, Any]) -> str:
    # Same pipeline version and arguments => same name => a rerun waits for / reuses that run.
    digest = hashlib.sha256(json.dumps(arguments, sort_keys=True).encode()).hexdigest()[:8]
    return f"{pipeline}-{env.name}-{version}-{digest}"


def upload_compiled(env: Environment, package: Path, kfp: KfpPipelines | None = None) -> PipelineVersion:
    kfp = kfp or KfpPipelines(env)
    return kfp.upload(package, version_name(commit_sha()))


def run_compiled(
    env: Environment, pipelines: dict, pipeline: str, arguments: dict[str, Any], kfp: KfpPipelines | None = None
) -> tuple[KfpPipelines, ClusterRun]:
    """Compile, upload (idempotent) and run one of the project's pipelines in `env`."""
    import tempfile

    from ..compile import compile_all

    kfp = kfp or KfpPipelines(env)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_all({pipeline: pipelines[pipeline]}, tmp)[pipeline]
        version = upload_compiled(env, package, kfp)
    name = _run_name(version.pipeline_name, env, version.version_name, arguments)
    run = kfp.run(
        version,
        arguments,
        run_name=name,
        experiment=env.namespace,
        timeout=env.timeouts.run_s,  # timeouts.run_s in config/environments.yaml
        pipeline_root=f"{env.cluster.artifact_root.rstrip('/')}/pipeline-root",
    )
    return kfp, run


def run_features(env: Environment, pipelines: dict, parameters: dict[str, Any]):
    """The feature pipeline on the cluster; the snapshot digest is computed from the artifact.

    `parameters`: the full, typed set the runner bound (mlrail.runner.bind)."""
    from ..runner import FeatureRun

    started = time.perf_counter()
    kfp, run = run_compiled(env, pipelines, "features", dict(parameters))
    data = kfp.read_artifact(run.artifact_id("features"))
    return FeatureRun(
        env=env.name,
        features_uri=run.output("features"),
        snapshot="sha256:" + hashlib.sha256(data).hexdigest(),
        rows=max(0, data.count(b"\n") - 1),  # CSV rows under the header
        seconds=round(time.perf_counter() - started, 3),
        params=dict(parameters),
    )


def run_training(env: Environment, pipelines: dict, features_uri: str, parameters: dict[str, Any]):
    """The training pipeline on the cluster: the model URI and the metrics the evaluate step wrote.

    `parameters`: the full, typed set the runner bound (mlrail.runner.bind)."""
    from ..runner import TrainingRun

    started = time.perf_counter()
    arguments = {"features_uri": features_uri, **parameters}
    kfp, run = run_compiled(env, pipelines, "training", arguments)
    metrics = json.loads(kfp.read_artifact(run.artifact_id("metrics")))
    imported = [key for key, uri in run.outputs.items() if uri == features_uri]
    snapshot_data = kfp.read_artifact(run.artifact_ids[imported[0]]) if imported else b""
    return TrainingRun(
        env=env.name,
        features_uri=features_uri,
        model_uri=run.output("model"),
        metrics={key: float(value) for key, value in metrics.items()},
        snapshot="sha256:" + hashlib.sha256(snapshot_data).hexdigest() if imported else "unknown",
        params=dict(parameters),
        seconds=round(time.perf_counter() - started, 3),
    )


def _api_message(exc) -> str:
    body = getattr(exc, "body", None)
    if body:
        try:
            parsed = json.loads(body)
            return str(parsed.get("message") or parsed.get("error") or body)[:300]
        except (ValueError, AttributeError):
            return str(body)[:300]
    return str(getattr(exc, "reason", "") or "")


@contextlib.contextmanager
def _quiet():
    """kfp prints links ("Pipeline details: ...") on stdout: results own stdout, so move them to stderr."""
    logging.getLogger("kfp").setLevel(logging.WARNING)
    with contextlib.redirect_stdout(sys.stderr):
        yield
