"""The KFP backend (kfp.Client) against a local server answering the v2beta1 REST API the way
the KFP API server does: pipelines, upload/upload_version (multipart), experiments, runs and
artifacts (with signed download URLs), plus the runner's cluster branch end to end."""

from __future__ import annotations

import dataclasses
import email.parser
import itertools
import json
import re
from pathlib import Path

import pytest
import yaml

from mlrail import config, runner
from mlrail.cluster import kfp_api
from mlrail.cluster.http import ClusterCallError, Retry
from mlrail.compile import compile_all
from test_cluster_http import NO_WAIT, LocalServer, closed_port

FEATURES_CSV = b"tenure,charges,churn,split\n1,20.5,0,train\n7,80.1,1,test\n3,45.0,0,train\n"
METRICS = {"accuracy": 0.93, "roc_auc": 0.97}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeKfp:
    """Pipelines, versions, experiments, runs and artifacts kept in memory. A run advances
    PENDING -> RUNNING -> final state on each GET, like a real one polled."""

    def __init__(self, final_state: str = "SUCCEEDED", steps_to_finish: int = 2):
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.artifacts: dict[str, dict] = {}
        self.blobs: dict[str, bytes] = {}
        self.ids = itertools.count(1)
        self.final_state = final_state
        self.steps_to_finish = steps_to_finish
        self.server: LocalServer | None = None

    def _id(self, kind: str) -> str:
        return f"{kind}-{next(self.ids)}"

    @staticmethod
    def _matches(item: dict, request) -> bool:
        raw = request.query.get("filter", [None])[0]
        if not raw:
            return True
        return all(
            item.get(p["key"]) == p["string_value" if "string_value" in p else "stringValue"]
            for p in json.loads(raw)["predicates"]
        )

    @staticmethod
    def _upload(request) -> bytes:
        message = email.parser.BytesParser().parsebytes(
            f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode() + request.body
        )
        for part in message.get_payload():
            if part.get_param("name", header="content-disposition") == "uploadfile":
                return part.get_payload(decode=True)
        raise AssertionError("no uploadfile part")

    def _add_artifact(self, run_id: str, task: str, output: str, content: bytes, kind: str) -> str:
        artifact_id = str(next(self.ids))
        uri = f"s3://churn-classifier-staging-models/pipeline-root/{run_id}/{task}/{artifact_id}/{output}"
        self.artifacts[artifact_id] = {"artifact_id": artifact_id, "uri": uri, "artifact_type": kind}
        self.blobs[artifact_id] = content
        return artifact_id

    def _finish(self, run: dict) -> None:
        run["state"] = self.final_state
        if self.final_state != "SUCCEEDED":
            run["error"] = {"code": 2, "message": "task 'train' failed: OOMKilled"}
            return
        version = self.versions[run["pipeline_version_reference"]["pipeline_version_id"]]
        tasks = []
        if version["pipeline_name"].endswith("-features"):
            features = self._add_artifact(run["run_id"], "make-features", "features", FEATURES_CSV, "system.Dataset")
            tasks.append({"display_name": "make-features", "outputs": {"features": {"artifact_ids": [features]}}})
            tasks.append({"display_name": "root", "outputs": {"Output": {"artifact_ids": [features]}}})
        else:
            features_uri = run["runtime_config"]["parameters"]["features_uri"]
            imported = next((a for a, v in self.artifacts.items() if v["uri"] == features_uri), None)
            model = self._add_artifact(run["run_id"], "train", "model", b"model-bytes", "system.Model")
            metrics = self._add_artifact(
                run["run_id"], "evaluate", "metrics", json.dumps(METRICS).encode(), "system.Metrics"
            )
            tasks += [
                {"display_name": "importer", "outputs": {"artifact": {"artifact_ids": [imported]}}},
                {"display_name": "train", "outputs": {"model": {"artifact_ids": [model]}}},
                {"display_name": "evaluate", "outputs": {"metrics": {"artifact_ids": [metrics]}}},
                {
                    "display_name": "root",
                    "outputs": {"model": {"artifact_ids": [model]}, "metrics": {"artifact_ids": [metrics]}},
                },
            ]
        run["run_details"] = {"task_details": tasks}

    def route(self, request):
        path, method = request.path, request.method
        query = {key: values[0] for key, values in request.query.items()}
        if path == "/apis/v2beta1/pipelines" and method == "GET":
            found = [
                p
                for p in self.pipelines.values()
                if p["namespace"] == query.get("namespace", "") and self._matches(p, request)
            ]
            return 200, {}, ({"pipelines": found, "total_size": len(found)} if found else {})
        if path == "/apis/v2beta1/pipelines/upload" and method == "POST":
            spec = self._upload(request)
            name = query["name"]
            if any(p["display_name"] == name for p in self.pipelines.values()):
                return 409, {}, {"error": f"Pipeline {name} already exists", "code": 6}
            pipeline_id = self._id("pipeline")
            self.pipelines[pipeline_id] = {
                "pipeline_id": pipeline_id,
                "display_name": name,
                "name": name,
                "namespace": query.get("namespace", ""),
                "description": query.get("description", ""),
            }
            self._add_version(pipeline_id, name, spec, query.get("description", ""))
            return 200, {}, self.pipelines[pipeline_id]
        if path == "/apis/v2beta1/pipelines/upload_version" and method == "POST":
            spec = self._upload(request)
            pipeline_id, name = query["pipelineid"], query["name"]
            if pipeline_id not in self.pipelines:
                return 404, {}, {"error": "pipeline not found", "code": 5}
            if any(v["pipeline_id"] == pipeline_id and v["display_name"] == name for v in self.versions.values()):
                return 409, {}, {"error": f"version {name} already exists", "code": 6}
            return 200, {}, self._add_version(pipeline_id, name, spec, query.get("description", ""))
        if (match := re.fullmatch(r"/apis/v2beta1/pipelines/([^/]+)/versions", path)) and method == "GET":
            found = [
                {k: v for k, v in ver.items() if k not in ("spec", "pipeline_name")}
                for ver in self.versions.values()
                if ver["pipeline_id"] == match[1] and self._matches(ver, request)
            ]
            return 200, {}, ({"pipeline_versions": found, "total_size": len(found)} if found else {})
        if path == "/apis/v2beta1/experiments":
            if method == "POST":
                body = request.json()
                experiment_id = self._id("experiment")
                self.experiments[experiment_id] = {"experiment_id": experiment_id, **body}
                return 200, {}, self.experiments[experiment_id]
            found = [e for e in self.experiments.values() if self._matches(e, request)]
            return 200, {}, ({"experiments": found} if found else {})
        if path == "/apis/v2beta1/runs":
            if method == "POST":
                body = request.json()
                run_id = self._id("run")
                self.runs[run_id] = {"run_id": run_id, "state": "PENDING", "polls": 0, **body}
                return 200, {}, self._public(self.runs[run_id])
            found = [
                self._public(r)
                for r in self.runs.values()
                if r["experiment_id"] == query.get("experiment_id") and self._matches(r, request)
            ]
            return 200, {}, ({"runs": found} if found else {})
        if match := re.fullmatch(r"/apis/v2beta1/runs/([^/]+)", path):
            run = self.runs[match[1]]
            run["polls"] += 1
            if run["state"] not in ("SUCCEEDED", "FAILED") and run["polls"] >= self.steps_to_finish:
                self._finish(run)
            elif run["state"] == "PENDING":
                run["state"] = "RUNNING"
            return 200, {}, self._public(run)
        if match := re.fullmatch(r"/apis/v2beta1/artifacts/([^/]+)", path):
            artifact = dict(self.artifacts[match[1]])
            if query.get("view") == "DOWNLOAD":
                artifact["download_url"] = f"{self.server.url}/signed/{match[1]}?X-Amz-Expires=15"
            return 200, {}, artifact
        if match := re.fullmatch(r"/signed/([^/]+)", path):
            return 200, {"Content-Type": "application/octet-stream"}, self.blobs[match[1]]
        return 404, {}, {"error": f"no route {method} {path}", "code": 5}

    def _add_version(self, pipeline_id: str, name: str, spec: bytes, description: str) -> dict:
        version_id = self._id("version")
        self.versions[version_id] = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": version_id,
            "display_name": name,
            "name": name,
            "description": description,
            "spec": spec,
            "pipeline_name": yaml.safe_load(spec)["pipelineInfo"]["name"],
        }
        return {k: v for k, v in self.versions[version_id].items() if k not in ("spec", "pipeline_name")}

    @staticmethod
    def _public(run: dict) -> dict:
        return {k: v for k, v in run.items() if k != "polls"}


@pytest.fixture()
def kfp_server(monkeypatch, project_copy):
    fake = FakeKfp()
    with LocalServer(fake.route) as server:
        fake.server = server
        monkeypatch.setenv("GITHUB_SHA", COMMIT)
        monkeypatch.setenv("MLOPS_BACKEND", "cluster")
        monkeypatch.setenv(kfp_api.TOKEN_VAR, "kfp-test-token")
        yield fake, server


def cluster_env(url: str, name: str = "staging") -> config.Environment:
    env = config.load().env(name)
    return dataclasses.replace(env, cluster=dataclasses.replace(env.cluster, kfp_endpoint=url))


def client(url: str, name: str = "staging", **kwargs) -> kfp_api.KfpPipelines:
    return kfp_api.KfpPipelines(cluster_env(url, name), retry=NO_WAIT, poll_seconds=0.01, **kwargs)


@pytest.fixture(scope="module")
def packages(tmp_path_factory) -> dict[str, Path]:
    return compile_all(tmp_path_factory.mktemp("pipelines"))


def test_first_upload_creates_the_pipeline_then_the_commit_version(kfp_server, packages):
    fake, server = kfp_server
    kfp = client(server.url)
    version = kfp.upload(packages["training"], "0123456789ab")
    assert version.created and version.pipeline_name == "churn-classifier-training"
    pipeline = fake.pipelines[version.pipeline_id]
    assert pipeline["namespace"] == "churn-classifier-staging"
    named = {v["display_name"]: v for v in fake.versions.values()}
    assert set(named) == {"churn-classifier-training", "0123456789ab"}
    assert named["0123456789ab"]["description"] == kfp_api.content_hash(packages["training"])
    assert named["0123456789ab"]["spec"] == packages["training"].read_bytes()
    # The bearer token reached the server on every call.
    assert all(r.headers.get("authorization") == "Bearer kfp-test-token" for r in server.requests)


def test_upload_is_idempotent_and_adds_versions_to_an_existing_pipeline(kfp_server, packages):
    fake, server = kfp_server
    kfp = client(server.url)
    first = kfp.upload(packages["features"], "aaaaaaaaaaaa")
    again = kfp.upload(packages["features"], "aaaaaaaaaaaa")
    assert not again.created and again.version_id == first.version_id
    second = kfp.upload(packages["features"], "bbbbbbbbbbbb")
    assert second.created and second.pipeline_id == first.pipeline_id
    assert len(fake.pipelines) == 1 and len(fake.versions) == 3  # initial + two commits


def test_a_commit_version_with_different_content_is_refused(kfp_server, packages, tmp_path):
    _, server = kfp_server
    kfp = client(server.url)
    kfp.upload(packages["features"], "cccccccccccc")
    changed = tmp_path / "features.yaml"
    changed.write_text(packages["features"].read_text().replace("Build the feature table", "Build features"))
    with pytest.raises(ClusterCallError, match=r"version 'cccccccccccc' of pipeline .* already exists with different"):
        kfp.upload(changed, "cccccccccccc")


def test_a_concurrent_upload_409_converges_on_the_existing_version(kfp_server, packages, monkeypatch):
    fake, server = kfp_server
    kfp = client(server.url)
    first = kfp.upload(packages["features"], "dddddddddddd")
    real = kfp.find_version
    misses = iter([None])  # the lookup misses once, as if the other job uploaded in between
    monkeypatch.setattr(kfp, "find_version", lambda pid, name: next(misses, None) or real(pid, name))
    again = kfp.upload(packages["features"], "dddddddddddd")
    assert again.version_id == first.version_id and not again.created


def test_run_waits_and_returns_output_uris_and_reruns_reuse_the_run(kfp_server, packages):
    fake, server = kfp_server
    kfp = client(server.url)
    version = kfp.upload(packages["features"], "eeeeeeeeeeee")
    run = kfp.run(
        version,
        {"seed": 42},
        run_name="features-staging-x",
        experiment="churn-classifier-staging",
        timeout=30,
        pipeline_root="s3://bucket/pipeline-root",
    )
    assert run.state == "SUCCEEDED" and not run.reused
    assert run.output("features").startswith("s3://churn-classifier-staging-models/")
    created = fake.runs[run.run_id]
    assert created["pipeline_version_reference"] == {
        "pipeline_id": version.pipeline_id,
        "pipeline_version_id": version.version_id,
    }
    assert created["runtime_config"] == {"parameters": {"seed": 42}, "pipeline_root": "s3://bucket/pipeline-root"}
    assert fake.experiments[created["experiment_id"]]["namespace"] == "churn-classifier-staging"
    rerun = kfp.run(
        version, {"seed": 42}, run_name="features-staging-x", experiment="churn-classifier-staging", timeout=30
    )
    assert rerun.reused and rerun.run_id == run.run_id and len(fake.runs) == 1 and len(fake.experiments) == 1


def test_a_failed_run_names_environment_endpoint_and_reason(kfp_server, packages):
    fake, server = kfp_server
    fake.final_state = "FAILED"
    kfp = client(server.url, "production")
    version = kfp.upload(packages["training"], "ffffffffffff")
    with pytest.raises(ClusterCallError) as caught:
        kfp.run(version, {"features_uri": "s3://x"}, run_name="r", experiment="e", timeout=30)
    message = str(caught.value)
    assert f"Kubeflow Pipelines (production) {server.url}" in message
    assert "ended FAILED: task 'train' failed: OOMKilled" in message


def test_a_run_past_its_timeout_is_reported_and_left_running(kfp_server, packages):
    fake, server = kfp_server
    fake.steps_to_finish = 10**6
    kfp = client(server.url)
    version = kfp.upload(packages["features"], "111111111111")
    with pytest.raises(ClusterCallError, match=r"did not finish within 0\.2s \(state RUNNING\); it keeps running"):
        kfp.run(version, {}, run_name="slow", experiment="e", timeout=0.2)


def test_reads_are_retried_on_5xx(kfp_server):
    fake, server = kfp_server
    failures = iter([503, 502])
    real_route = fake.route

    def flaky(request):
        status = next(failures, None) if request.method == "GET" else None
        return (status, {}, {"error": "unavailable", "code": 14}) if status else real_route(request)

    server.route = flaky
    kfp = client(server.url)
    assert kfp.find_pipeline("nope") is None
    assert [r.method for r in server.requests] == ["GET", "GET", "GET"]


def test_an_unreachable_server_names_environment_and_endpoint(project_copy):
    url = f"http://127.0.0.1:{closed_port()}"
    kfp = kfp_api.KfpPipelines(cluster_env(url, "sandbox"), retry=Retry(attempts=2, backoff=0.01))
    with pytest.raises(ClusterCallError, match=rf"Kubeflow Pipelines \(sandbox\) {url}: looking up pipeline"):
        kfp.find_pipeline("churn-classifier-features")


def test_a_slow_server_hits_the_request_timeout(kfp_server):
    import time

    fake, server = kfp_server

    def slow(request):
        time.sleep(1.0)
        return 200, {}, {}

    server.route = slow
    kfp = client(server.url, request_timeout=0.3)
    kfp.retry = Retry(attempts=1)
    started = time.perf_counter()
    with pytest.raises(ClusterCallError, match=r"Kubeflow Pipelines \(staging\) .*: looking up pipeline"):
        kfp.find_pipeline("x")
    assert time.perf_counter() - started < 5


def test_runner_cluster_branch_trains_through_the_api(kfp_server, monkeypatch):
    fake, server = kfp_server
    env = cluster_env(server.url)
    real = kfp_api.KfpPipelines
    monkeypatch.setattr(kfp_api, "KfpPipelines", lambda e: real(e, retry=NO_WAIT, poll_seconds=0.01))
    features = runner.run_features(env)
    assert features.features_uri.startswith("s3://") and features.rows == 3
    assert features.snapshot == "sha256:" + __import__("hashlib").sha256(FEATURES_CSV).hexdigest()
    training = runner.run_training(env, features.features_uri, c=0.5)
    assert training.metrics == METRICS and training.params == {"c": 0.5, "max_iter": 1000, "seed": 42}
    assert "/train/" in training.model_uri and training.snapshot == features.snapshot
    versions = sorted(v["display_name"] for v in fake.versions.values())
    assert versions == sorted(["churn-classifier-features", COMMIT[:12], "churn-classifier-training", COMMIT[:12]])
    # A rerun of the same commit and arguments reuses the runs instead of training again.
    runner.run_training(env, features.features_uri, c=0.5)
    assert len(fake.runs) == 2
