"""Kubeflow Pipelines through `kfp.Client`: upload a compiled pipeline as a version named by the
commit, run it in the environment's experiment, wait for it with a deadline, and return the URIs
of the pipeline's outputs.

Only kfp.Client's own calls are used (`get_pipeline_id`, `upload_pipeline`,
`upload_pipeline_version`, `list_pipeline_versions`, `create_experiment`, `list_runs`,
`run_pipeline`, `get_run`, polled until the run is final: `wait_for_run_completion` does not
know CANCELED); the one endpoint it does not wrap, the
artifact service (`GET /apis/v2beta1/artifacts/{id}`, for an output's URI), goes through the
engine's HTTP policy. kfp.Client sends its requests without a timeout and offers no setting for
one, so every call runs under a deadline kept from outside (`timeouts.deadline_s`; the wait for a
run: `timeouts.run_s`); idempotent reads are retried on 5xx and dropped connections within it.

Pipelines are uploaded as shared pipelines, the ones `get_pipeline_id` finds; experiments and
runs live in the environment's namespace.

Idempotent by construction: an existing pipeline gets a new version, an existing version of the
same name and content is reused, and a run of the same name that succeeded (or is still running)
is waited for instead of starting another. Within one process a pipeline is compiled and uploaded
once, however many runs use it.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import git as gitcmd
from ..config import DEFAULT_TIMEOUTS, Environment
from . import http
from .http import ClusterCallError

SUCCEEDED = "SUCCEEDED"
RERUN_STATES = frozenset({"FAILED", "CANCELED", "CANCELLED", "SKIPPED"})  # a rerun starts a new run
FINAL_STATES = frozenset({SUCCEEDED, "FAILED", "CANCELED", "CANCELLED", "SKIPPED", "ERROR"})  # V2beta1RuntimeState
TOKEN_VAR = "KFP_TOKEN"  # noqa: S105 - the variable name; bearer token for the KFP API (e.g. from the OIDC-federated identity)
SETTINGS = http.SETTINGS
RETRY_STATUSES = frozenset({0, 500, 502, 503, 504})  # 0: kfp_server_api's status for a failed connection
MAX_METRICS_BYTES = 16 * 1024 * 1024


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
    pipeline_outputs: dict[str, str] = field(default_factory=dict)  # pipeline output name -> "<task>/<output>"

    def output(self, name: str) -> str:
        """The URI of output `name`: a pipeline output ("model"), or "<task>/<output>"."""
        return self.outputs[self._key(name)]

    def artifact_id(self, name: str) -> str:
        return self.artifact_ids[self._key(name)]

    def _key(self, name: str) -> str:
        key = self.pipeline_outputs.get(name, name)
        if key not in self.outputs:
            raise KeyError(
                f"run {self.run_id} has no output {name!r}; its pipeline outputs are {sorted(self.pipeline_outputs)} "
                f"and its task outputs {sorted(self.outputs)}"
            )
        return key


def commit_sha(root: Path | None = None) -> str:
    """The commit a pipeline version is named by: GITHUB_SHA in CI, else HEAD."""
    sha = os.environ.get("GITHUB_SHA", "").strip()
    if sha:
        return sha
    head = gitcmd.rev(root or ".", "HEAD")
    if head is None:
        raise ClusterCallError("cannot name the pipeline version: no GITHUB_SHA and `git rev-parse HEAD` failed")
    return head


def version_name(commit: str) -> str:
    return commit[:12]


def content_hash(path: Path | str) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _spec(path: Path | str) -> dict:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ClusterCallError(f"{path} is not a readable compiled KFP pipeline: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("pipelineInfo"), dict) or "root" not in doc:
        raise ClusterCallError(f"{path} is not a compiled KFP pipeline (no pipelineInfo.name or root)")
    return doc


def pipeline_name_of(path: Path | str) -> str:
    name = _spec(path)["pipelineInfo"].get("name")
    if not name:
        raise ClusterCallError(f"{path} is not a compiled KFP pipeline (no pipelineInfo.name)")
    return name


def pipeline_outputs(path: Path | str) -> dict[str, str]:
    """Each output artifact the pipeline returns -> "<task display name>/<output key>" of its producer,
    read from the compiled IR (root.dag.outputs), so no task or output name is assumed."""
    doc = _spec(path)
    dag = doc["root"].get("dag", {})
    tasks = dag.get("tasks", {})
    found = {}
    for name, spec in (dag.get("outputs", {}).get("artifacts") or {}).items():
        selector = (spec.get("artifactSelectors") or [{}])[0]
        producer = selector.get("producerSubtask")
        display = tasks.get(producer, {}).get("taskInfo", {}).get("name", producer)
        found[name] = f"{display}/{selector.get('outputArtifactKey')}"
    return found


class KfpPipelines:
    """The Kubeflow Pipelines API of one environment."""

    def __init__(
        self,
        env: Environment,
        client: Any = None,
        timeouts: Any = None,
        retry: http.Retry | None = None,
        poll_seconds: float | None = None,
    ):
        self.env = env
        self.endpoint = env.cluster.kfp_endpoint.rstrip("/")
        self.timeouts = timeouts or getattr(env, "timeouts", None) or DEFAULT_TIMEOUTS
        self.retry = retry or http.Retry()
        # between two reads of a running run: timeouts.poll_s
        self.poll_seconds = poll_seconds or float(getattr(self.timeouts, "poll_s", DEFAULT_TIMEOUTS.poll_s))
        self.token = os.environ.get(TOKEN_VAR) or None
        self.client = client or self._call("connecting", self._connect)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.api = http.JsonApi(
            "Kubeflow Pipelines", env.name, self.endpoint, headers=headers, timeouts=http.Timeouts.of(env)
        )

    def _connect(self):
        import warnings

        import kfp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP >= 2.0.0-beta.2"
            return kfp.Client(host=self.endpoint, namespace=self.env.namespace, existing_token=self.token)

    def where(self) -> str:
        return f"Kubeflow Pipelines ({self.env.name}) {self.endpoint}"

    # --- one bounded call -----------------------------------------------------------------

    def _call(self, what: str, fn: Callable[..., Any], *args, idempotent: bool = False, **kwargs) -> Any:
        """Run one kfp.Client call within `timeouts.deadline_s`; any failure is one sentence naming
        the environment and the endpoint. Idempotent reads are retried within the same deadline."""
        from kfp_server_api.exceptions import ApiException

        seconds = float(self.timeouts.deadline_s)
        ends = time.monotonic() + seconds
        delays = _delays(self.retry)
        while True:
            try:
                return _bounded(fn, args, kwargs, ends, f"{self.where()}: {what}", seconds, "timeouts.deadline_s")
            except ApiException as exc:
                if idempotent and exc.status in RETRY_STATUSES and _wait(next(delays, None), ends):
                    continue
                raise ClusterCallError(
                    f"{self.where()}: {what} failed: {exc.status or ''} {_api_message(exc)}".replace("  ", " "),
                    status=exc.status,
                ) from exc
            except ClusterCallError:
                raise
            except ValueError as exc:  # kfp.Client's own checks, e.g. "Multiple pipelines with the name"
                raise ClusterCallError(f"{self.where()}: {what} failed: {exc}") from exc
            except Exception as exc:  # urllib3 MaxRetryError (connection refused), DNS
                if idempotent and _wait(next(delays, None), ends):
                    continue
                reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                raise ClusterCallError(f"{self.where()}: {what} failed: {reason}") from exc

    # --- pipelines and versions -----------------------------------------------------------

    def find_pipeline(self, name: str) -> str | None:
        return self._call(f"looking up pipeline {name!r}", self.client.get_pipeline_id, name, idempotent=True)

    def find_version(self, pipeline_id: str, name: str):
        result = self._call(
            f"looking up version {name!r}",
            self.client.list_pipeline_versions,
            pipeline_id=pipeline_id,
            page_size=10,
            filter=_named(name),
            idempotent=True,
        )
        matches = [v for v in (result.pipeline_versions or []) if v.display_name == name]
        return matches[0] if matches else None

    def upload(self, package: Path | str, version: str) -> PipelineVersion:
        """Upload `package` as version `version` of its pipeline (creating the pipeline first)."""
        name = pipeline_name_of(package)
        content = content_hash(package)
        cached = _UPLOADED.get((self.endpoint, name, version, content))
        if cached is not None:
            return dataclasses.replace(cached, created=False)
        pipeline_id = self.find_pipeline(name)
        if pipeline_id is None:
            # First upload: the pipeline is created with an initial version of its own name;
            # the commit-named version below is the one every run references.
            try:
                created = self._call(
                    f"creating pipeline {name!r}",
                    self.client.upload_pipeline,
                    pipeline_package_path=str(package),
                    pipeline_name=name,
                    description=f"{name}: versions are named by commit",
                )
                pipeline_id = created.pipeline_id
            except ClusterCallError as exc:  # created concurrently by another job: use that one
                pipeline_id = self.find_pipeline(name) if exc.status == 409 else None
                if pipeline_id is None:
                    raise
        uploaded = self._version(package, name, pipeline_id, version, content)
        _UPLOADED[(self.endpoint, name, version, content)] = uploaded
        return uploaded

    def _version(self, package: Path | str, name: str, pipeline_id: str, version: str, content: str):
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
                f"{self.where()}: version {version!r} of pipeline {name!r} already exists with different content "
                f"({recorded[:19]}… vs {content[:19]}…); a commit names exactly one compiled pipeline, so "
                "recompile with the same PROJECT_IMAGE"
            )
        return PipelineVersion(name, pipeline_id, existing.pipeline_version_id, version, content, created=False)

    # --- runs -----------------------------------------------------------------------------

    def experiment_id(self, name: str) -> str:
        experiment = self._call(
            f"creating experiment {name!r}", self.client.create_experiment, name=name, namespace=self.env.namespace
        )
        return experiment.experiment_id

    def find_run(self, experiment_id: str, name: str):
        result = self._call(
            f"looking up run {name!r}",
            self.client.list_runs,
            experiment_id=experiment_id,
            filter=_named(name),
            sort_by="created_at desc",
            page_size=10,
            idempotent=True,
        )
        runs = [r for r in (result.runs or []) if r.display_name == name]
        runs = [r for r in runs if (r.state or "").upper() not in RERUN_STATES]
        return runs[0] if runs else None

    def run(
        self,
        version: PipelineVersion,
        arguments: dict[str, Any],
        run_name: str,
        experiment: str,
        timeout: float | None = None,
        pipeline_root: str | None = None,
        outputs: dict[str, str] | None = None,
    ) -> ClusterRun:
        """Run `version` and wait for it; a rerun waits for a run of the same name unless it failed."""
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
        finished = self.wait(run_id, run_name, float(timeout if timeout is not None else self.timeouts.run_s))
        state = (finished.state or "").upper()
        if state != SUCCEEDED:
            message = getattr(finished.error, "message", None) or "no error message"
            raise ClusterCallError(
                f"{self.where()}: run {run_name!r} ({run_id}) ended {state}: {message} ({self.run_url(run_id)})"
            )
        uris, ids = self.outputs(finished)
        return ClusterRun(run_id, run_name, state, uris, ids, reused, dict(outputs or {}))

    def run_url(self, run_id: str) -> str:
        return f"{self.endpoint}/#/runs/details/{run_id}"

    def wait(self, run_id: str, run_name: str, timeout: float):
        """Poll the run until it is final or `timeout` passes (then it is reported, left running).
        Not kfp.Client.wait_for_run_completion: its final states omit CANCELED, so a run cancelled
        in the UI would be waited on until timeouts.run_s."""
        ends = time.monotonic() + timeout
        while True:
            run = self._call(f"reading run {run_name!r} ({run_id})", self.client.get_run, run_id, idempotent=True)
            state = (run.state or "").upper()
            if state in FINAL_STATES:
                return run
            left = ends - time.monotonic()
            if left <= 0:
                raise ClusterCallError(
                    f"{self.where()}: run {run_name!r} ({run_id}) did not finish within {timeout:g}s (state "
                    f"{state or 'unknown'}); it keeps running at {self.run_url(run_id)} — rerun to wait for it "
                    f"again, or raise timeouts.run_s in {SETTINGS}"
                )
            time.sleep(min(self.poll_seconds, left))

    def outputs(self, run) -> tuple[dict[str, str], dict[str, str]]:
        uris, ids = {}, {}
        for task in (run.run_details.task_details if run.run_details else None) or []:
            for output, artifacts in (task.outputs or {}).items():
                for artifact_id in artifacts.artifact_ids or []:
                    key = f"{task.display_name}/{output}"
                    ids[key] = str(artifact_id)
                    uris[key] = self.artifact(str(artifact_id))["uri"]
        return uris, ids

    def artifact(self, artifact_id: str) -> dict[str, Any]:
        """GET /apis/v2beta1/artifacts/{id} (KFP's artifact service; kfp.Client has no call for it)."""
        body = self.api.json("GET", f"/apis/v2beta1/artifacts/{artifact_id}", params={"view": "BASIC"})
        if not isinstance(body, dict) or not body.get("uri"):
            raise ClusterCallError(f"{self.where()}: artifact {artifact_id} has no URI: {str(body)[:200]}")
        return body


# --- the runner's cluster branch ------------------------------------------------------------

_UPLOADED: dict[tuple[str, str, str, str], PipelineVersion] = {}  # this process's uploads
_COMPILED: dict[tuple[int, str], Path] = {}  # (pipeline function, PROJECT_IMAGE) -> compiled package
_COMPILE_DIR: list[tempfile.TemporaryDirectory] = []


def compiled(pipeline: Any, name: str) -> Path:
    """The compiled package of a pipeline function, compiled once per process; a path is taken as is."""
    if isinstance(pipeline, (str, Path)):
        return Path(pipeline)
    key = (id(pipeline), os.environ.get("PROJECT_IMAGE", ""))
    if key not in _COMPILED:
        from ..compile import compile_all

        if not _COMPILE_DIR:
            _COMPILE_DIR.append(tempfile.TemporaryDirectory(prefix="mlrail-compiled-"))
        folder = Path(_COMPILE_DIR[0].name) / f"{len(_COMPILED)}"
        _COMPILED[key] = compile_all({name: pipeline}, folder)[name]
    return _COMPILED[key]


def _run_name(pipeline: str, env: Environment, version: str, arguments: dict[str, Any]) -> str:
    # Same pipeline version and arguments => same name => a rerun waits for / reuses that run.
    digest = hashlib.sha256(json.dumps(arguments, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{pipeline}-{env.name}-{version}-{digest}"


def upload_compiled(env: Environment, package: Path, kfp: KfpPipelines | None = None) -> PipelineVersion:
    kfp = kfp or KfpPipelines(env)
    return kfp.upload(package, version_name(commit_sha()))


def run_compiled(
    env: Environment,
    pipelines: dict,
    pipeline: str,
    arguments: dict[str, Any],
    kfp: KfpPipelines | None = None,
    package: Path | str | None = None,
) -> tuple[KfpPipelines, ClusterRun]:
    """Upload (once) and run one of the project's pipelines in `env`. `package` is the compiled
    pipeline when the caller compiled it (e.g. `mlrail compile`); otherwise it is compiled here, once."""
    kfp = kfp or KfpPipelines(env)
    package = Path(package) if package is not None else compiled(pipelines[pipeline], pipeline)
    version = upload_compiled(env, package, kfp)
    name = _run_name(version.pipeline_name, env, version.version_name, arguments)
    run = kfp.run(
        version,
        arguments,
        run_name=name,
        experiment=env.namespace,
        timeout=kfp.timeouts.run_s,
        pipeline_root=f"{env.cluster.artifact_root.rstrip('/')}/pipeline-root",
        outputs=pipeline_outputs(package),
    )
    return kfp, run


def _store(env: Environment):
    from ..artifacts import ArtifactStore

    return ArtifactStore(env)


def _content(env: Environment, uri: str) -> Iterator[bytes]:
    from ..artifacts import ArtifactError

    try:
        yield from _store(env).blocks(uri)
    except ArtifactError as exc:
        raise ClusterCallError(f"{env.name}: cannot read pipeline output {uri}: {exc}") from None


def run_features(env: Environment, pipelines: dict, parameters: dict[str, Any], package: Path | str | None = None):
    """The feature pipeline on the cluster; its one output's content hash is the data snapshot."""
    from ..runs import FeatureRun

    started = time.perf_counter()
    kfp, run = run_compiled(env, pipelines, "features", dict(parameters), package=package)
    if len(run.pipeline_outputs) != 1:
        raise ClusterCallError(
            "the features pipeline must return exactly one Dataset; it returns "
            f"{sorted(run.pipeline_outputs) or 'none'}"
        )
    uri = run.output(next(iter(run.pipeline_outputs)))
    digest, lines = hashlib.sha256(), 0
    for block in _content(env, uri):
        digest.update(block)
        lines += block.count(b"\n")
    return FeatureRun(
        env=env.name,
        features_uri=uri,
        snapshot="sha256:" + digest.hexdigest(),
        rows=max(0, lines - 1),  # text rows under a header line
        seconds=round(time.perf_counter() - started, 3),
        params=dict(parameters),
    )


def run_training(
    env: Environment, pipelines: dict, features_uri: str, parameters: dict[str, Any], package: Path | str | None = None
):
    """The training pipeline on the cluster: the URI of its `model` output (a directory under the
    pipeline root, stored and registered from there) and the `metrics` its evaluation wrote."""
    from ..runs import TrainingRun

    started = time.perf_counter()
    arguments = {"features_uri": features_uri, **parameters}
    kfp, run = run_compiled(env, pipelines, "training", arguments, package=package)
    missing = [name for name in ("model", "metrics") if name not in run.pipeline_outputs]
    if missing:
        raise ClusterCallError(
            f"the training pipeline must return outputs model and metrics; it returns "
            f"{sorted(run.pipeline_outputs) or 'none'} (missing {', '.join(missing)})"
        )
    raw, size = [], 0
    for block in _content(env, run.output("metrics")):
        size += len(block)
        if size > MAX_METRICS_BYTES:
            raise ClusterCallError(f"{env.name}: the metrics of run {run.run_id} exceed {MAX_METRICS_BYTES} bytes")
        raw.append(block)
    try:
        metrics = {str(key): float(value) for key, value in json.loads(b"".join(raw)).items()}
    except (ValueError, TypeError, AttributeError):
        raise ClusterCallError(
            f"{env.name}: the metrics output of run {run.run_id} ({run.output('metrics')}) is not a JSON object of "
            "name -> number"
        ) from None
    snapshot = hashlib.sha256()
    for block in _content(env, features_uri):
        snapshot.update(block)
    return TrainingRun(
        env=env.name,
        features_uri=features_uri,
        model_uri=run.output("model"),
        metrics=metrics,
        snapshot="sha256:" + snapshot.hexdigest(),
        params=dict(parameters),
        seconds=round(time.perf_counter() - started, 3),
    )


# --- helpers ----------------------------------------------------------------------------------


def _named(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def _delays(retry: http.Retry) -> Iterator[float]:
    """Exponential backoff between the tries of a read, as the HTTP policy's urllib3 Retry spaces them."""
    delay = retry.backoff
    for _ in range(max(retry.attempts - 1, 0)):
        yield min(delay, retry.max_backoff)
        delay *= 2


def _wait(delay: float | None, ends: float) -> bool:
    """Sleep `delay` before a retry if one is left and it fits before the deadline."""
    if delay is None or time.monotonic() + delay >= ends:
        return False
    time.sleep(delay)
    return True


def _bounded(fn: Callable[..., Any], args: tuple, kwargs: dict, ends: float, what: str, seconds: float, setting: str):
    """Call fn in a daemon thread and give up at `ends`: kfp.Client has no request timeout, so a
    server that accepts and never answers would otherwise block forever. Its links
    ("Run details: …") go to stderr: stdout carries the command's results."""
    result: dict[str, Any] = {}
    context = contextvars.copy_context()

    def target() -> None:
        try:
            result["value"] = context.run(fn, *args, **kwargs)
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc

    worker = threading.Thread(target=target, name="mlrail-kfp-call", daemon=True)
    logging.getLogger("kfp").setLevel(logging.WARNING)
    with contextlib.redirect_stdout(sys.stderr):
        worker.start()
        worker.join(max(0.0, ends - time.monotonic()))
    if worker.is_alive():
        raise ClusterCallError(f"{what}: no answer within {seconds:g}s (raise {setting} in {SETTINGS})")
    if "error" in result:
        raise result["error"]
    return result.get("value")


def _api_message(exc) -> str:
    body = getattr(exc, "body", None)
    if body:
        try:
            parsed = json.loads(body)
            return str(parsed.get("message") or parsed.get("error") or body)[:300]
        except (ValueError, AttributeError):
            return str(body)[:300]
    return str(getattr(exc, "reason", "") or "")
