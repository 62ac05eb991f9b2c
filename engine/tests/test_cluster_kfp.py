"""The KFP backend (kfp.Client) against the cluster simulation's KFP API emulator, which executes
runs with the example project's components and writes their artifacts under an s3:// pipeline
root in the S3 emulator: uploads, versions, runs, waits, failures, deadlines, and the runner's
cluster branch through to storing the trained model (the staging store step)."""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import threading
import time

import pytest

from mlrail import config, runner
from mlrail.artifacts import ArtifactStore, directory_digest
from mlrail.cluster import kfp_api
from mlrail.cluster.http import ClusterCallError, Retry
from mlrail.compile import compile_all
from sim.kfp_api import TOKEN, Fault, kfp_emulator_fixture
from sim.storage import environment_buckets, s3_emulator  # noqa: F401 - the module's S3 server

COMMIT = "0123456789abcdef0123456789abcdef01234567"
NO_WAIT = Retry(attempts=3, backoff=0.01, max_backoff=0.01)
kfp_emulator = kfp_emulator_fixture()


@pytest.fixture()
def cluster(kfp_emulator, s3_emulator, project_copy, monkeypatch, tmp_path):  # noqa: F811
    s3_emulator.use(monkeypatch, tmp_path)
    monkeypatch.setenv("GITHUB_SHA", COMMIT)
    monkeypatch.setenv("MLOPS_BACKEND", "cluster")
    monkeypatch.setenv(kfp_api.TOKEN_VAR, TOKEN)
    monkeypatch.setattr(kfp_api, "_UPLOADED", {})  # every test starts without this process's uploads
    s3_emulator.reset(environment_buckets(config.load()))
    return kfp_emulator


def cluster_env(url: str, name: str = "staging", **timeouts) -> config.Environment:
    env = config.load().env(name)
    return dataclasses.replace(
        env,
        cluster=env.cluster.model_copy(update={"kfp_endpoint": url}),
        timeouts=env.timeouts.model_copy(update=timeouts),
    )


def client(url: str, name: str = "staging", **timeouts) -> kfp_api.KfpPipelines:
    return kfp_api.KfpPipelines(cluster_env(url, name, **timeouts), retry=NO_WAIT, poll_seconds=0.1)


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    cfg = config.load(__import__("example").ROOT)
    return compile_all(cfg.load_pipelines(), tmp_path_factory.mktemp("pipelines"))


def test_first_upload_creates_the_pipeline_then_the_commit_version(cluster, packages):
    kfp = client(cluster.url)
    version = kfp.upload(packages["training"], "0123456789ab")
    assert version.created and version.pipeline_name == "churn-classifier-training"
    assert cluster.pipelines[version.pipeline_id]["namespace"] == ""  # shared: what get_pipeline_id finds
    named = {v["display_name"]: v for v in cluster.versions.values()}
    assert set(named) == {"churn-classifier-training", "0123456789ab"}
    assert named["0123456789ab"]["description"] == kfp_api.content_hash(packages["training"])
    assert named["0123456789ab"]["pipeline_spec"]["pipelineInfo"]["name"] == "churn-classifier-training"
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in cluster.requests)


def test_upload_is_idempotent_and_adds_versions_to_an_existing_pipeline(cluster, packages, monkeypatch):
    kfp = client(cluster.url)
    first = kfp.upload(packages["features"], "aaaaaaaaaaaa")
    seen = len(cluster.requests)
    assert kfp.upload(packages["features"], "aaaaaaaaaaaa").version_id == first.version_id
    assert len(cluster.requests) == seen  # uploaded once per process: no second round of calls
    monkeypatch.setattr(kfp_api, "_UPLOADED", {})  # another process (a rerun) finds and reuses it
    again = kfp.upload(packages["features"], "aaaaaaaaaaaa")
    assert not again.created and again.version_id == first.version_id
    second = kfp.upload(packages["features"], "bbbbbbbbbbbb")
    assert second.created and second.pipeline_id == first.pipeline_id
    assert len(cluster.pipelines) == 1 and len(cluster.versions) == 3  # initial + two commits


def test_a_commit_version_with_different_content_is_refused(cluster, packages, tmp_path):
    kfp = client(cluster.url)
    kfp.upload(packages["features"], "cccccccccccc")
    changed = tmp_path / "features.yaml"
    changed.write_text(packages["features"].read_text().replace("Build the feature table", "Build features"))
    with pytest.raises(ClusterCallError, match=r"version 'cccccccccccc' of pipeline .* already exists with different"):
        kfp.upload(changed, "cccccccccccc")


def test_a_concurrent_upload_409_converges_on_the_existing_version(cluster, packages, monkeypatch):
    kfp = client(cluster.url)
    first = kfp.upload(packages["features"], "dddddddddddd")
    monkeypatch.setattr(kfp_api, "_UPLOADED", {})
    real = kfp.find_version
    misses = iter([None])  # the lookup misses once, as if the other job uploaded in between
    monkeypatch.setattr(kfp, "find_version", lambda pid, name: next(misses, None) or real(pid, name))
    again = kfp.upload(packages["features"], "dddddddddddd")
    assert again.version_id == first.version_id and not again.created


def test_run_waits_returns_the_pipeline_outputs_and_a_rerun_reuses_the_run(cluster, packages):
    kfp = client(cluster.url)
    version = kfp.upload(packages["features"], "eeeeeeeeeeee")
    outputs = kfp_api.pipeline_outputs(packages["features"])
    root = "s3://churn-classifier-staging-models/pipeline-root"
    run = kfp.run(version, {"seed": 42}, "features-x", "churn-classifier-staging", 120, root, outputs)
    assert run.state == "SUCCEEDED" and not run.reused
    assert run.output("Output").startswith(f"{root}/churn-classifier-features/{run.run_id}/")
    created = cluster.runs[run.run_id]
    assert created["pipeline_version_reference"] == {
        "pipeline_id": version.pipeline_id,
        "pipeline_version_id": version.version_id,
    }
    assert created["runtime_config"] == {"parameters": {"seed": 42}, "pipeline_root": root}
    assert cluster.experiments[created["experiment_id"]]["namespace"] == "churn-classifier-staging"
    rerun = kfp.run(version, {"seed": 42}, "features-x", "churn-classifier-staging", 120, root, outputs)
    assert rerun.reused and rerun.run_id == run.run_id and len(cluster.runs) == 1 and len(cluster.experiments) == 1


def test_a_failed_run_names_environment_endpoint_reason_and_run(cluster, packages):
    kfp = client(cluster.url, "production")
    version = kfp.upload(packages["training"], "ffffffffffff")
    root = "s3://churn-classifier-production-models/pipeline-root"
    with pytest.raises(ClusterCallError) as caught:
        kfp.run(version, {"features_uri": f"{root}/missing"}, "r", "churn-classifier-production", 120, root)
    message = str(caught.value)
    assert f"Kubeflow Pipelines (production) {cluster.url}: run 'r' (" in message
    assert "ended FAILED: task 'train': failed to download input artifact 'features'" in message
    assert f"{cluster.url}/#/runs/details/" in message


def test_a_run_past_its_timeout_is_reported_with_the_run_the_url_and_the_setting(cluster, packages):
    kfp = client(cluster.url)
    version = kfp.upload(packages["features"], "111111111111")
    with cluster.hold_runs(), pytest.raises(ClusterCallError) as caught:
        kfp.run(version, {}, "slow", "churn-classifier-staging", 0.5, "s3://churn-classifier-staging-models/r")
    message = str(caught.value)
    run_id = next(iter(cluster.runs))
    assert f"run 'slow' ({run_id}) did not finish within 0.5s (state RUNNING)" in message
    assert f"it keeps running at {cluster.url}/#/runs/details/{run_id}" in message
    assert "raise timeouts.run_s in config/environments.yaml" in message


def test_a_cancelled_run_ends_the_wait_with_its_state(cluster, packages):
    """kfp.Client.wait_for_run_completion knows no CANCELED state (it would wait out timeouts.run_s):
    a run cancelled in the KFP UI ends the wait with one line naming it."""
    kfp = client(cluster.url)
    version = kfp.upload(packages["features"], "222222222222")

    def cancel() -> None:
        deadline = time.monotonic() + 10
        while not cluster.runs and time.monotonic() < deadline:
            time.sleep(0.05)
        cluster._set_state(next(iter(cluster.runs.values())), "CANCELED")

    with cluster.hold_runs(), pytest.raises(ClusterCallError) as caught:
        threading.Thread(target=cancel, daemon=True).start()
        kfp.run(version, {}, "cancelled", "churn-classifier-staging", 20, "s3://churn-classifier-staging-models/r")
    run_id = next(iter(cluster.runs))
    assert f"run 'cancelled' ({run_id}) ended CANCELED" in str(caught.value)


def test_the_poll_interval_comes_from_timeouts_poll_s(cluster):
    from mlrail.cluster import sync

    env = cluster_env(cluster.url, poll_s=0.25)
    assert kfp_api.KfpPipelines(env).poll_seconds == 0.25
    assert kfp_api.KfpPipelines(cluster_env(cluster.url)).poll_seconds == 5.0  # the default
    server = {"ARGOCD_SERVER": "127.0.0.1:9", "ARGOCD_AUTH_TOKEN": "t"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in server.items():
            patch.setenv(key, value)
        assert sync.ArgoCd.from_environment(env).poll_seconds == 0.25


def test_reads_are_retried_on_5xx(cluster):
    cluster.faults.append(Fault("GET", 503, count=2))
    kfp = client(cluster.url)
    assert kfp.find_pipeline("nope") is None
    assert [r.method for r in cluster.requests] == ["GET", "GET", "GET"]


def test_writes_are_not_retried(cluster, packages):
    cluster.faults.append(Fault("POST", 503, count=1))
    kfp = client(cluster.url)
    with pytest.raises(ClusterCallError, match=r"creating pipeline 'churn-classifier-features' failed: 503"):
        kfp.upload(packages["features"], "222222222222")
    assert [r.method for r in cluster.requests].count("POST") == 1


def test_an_unreachable_server_names_environment_and_endpoint(cluster):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    kfp = client(url, "sandbox", deadline_s=3)
    with pytest.raises(ClusterCallError, match=rf"Kubeflow Pipelines \(sandbox\) {url}: looking up pipeline"):
        kfp.find_pipeline("churn-classifier-features")


def test_a_server_that_never_answers_is_given_up_at_the_deadline(cluster):
    cluster.delay_s = 5
    kfp = client(cluster.url, deadline_s=0.5)
    started = time.perf_counter()
    with pytest.raises(ClusterCallError) as caught:
        kfp.find_pipeline("x")
    assert time.perf_counter() - started < 3
    assert "looking up pipeline 'x': no answer within 0.5s (raise timeouts.deadline_s in config/environments.yaml)" in (
        str(caught.value)
    )
    cluster.delay_s = 0


def test_runner_cluster_branch_trains_and_the_store_takes_the_remote_model(cluster, monkeypatch):
    # The staging flow on the cluster: features, training, then the store step that used to fail
    # with "model directory s3:/… does not exist".
    env = cluster_env(cluster.url)
    real = kfp_api.KfpPipelines
    monkeypatch.setattr(kfp_api, "KfpPipelines", lambda e: real(e, retry=NO_WAIT, poll_seconds=0.1))
    compiles = []
    real_compile = kfp_api.compiled
    monkeypatch.setattr(kfp_api, "_COMPILED", {})
    monkeypatch.setattr(kfp_api, "compiled", lambda p, n: compiles.append(n) or real_compile(p, n))
    pipelines = config.load().load_pipelines()
    features = runner.run_features(env, pipelines, {})
    assert features.features_uri.startswith("s3://churn-classifier-staging-models/pipeline-root/")
    data = ArtifactStore(env).blocks(features.features_uri)
    table = b"".join(data)
    assert features.snapshot == "sha256:" + hashlib.sha256(table).hexdigest() and features.rows > 0
    training = runner.run_training(env, pipelines, features.features_uri, {"seed": 7})
    assert training.model_uri.startswith(
        "s3://churn-classifier-staging-models/pipeline-root/churn-classifier-training/"
    )
    assert training.metrics and training.snapshot == features.snapshot
    assert training.params["seed"] == 7

    store = ArtifactStore(env)
    stored = store.put(training.model_uri)
    assert stored.uri == store.uri_for(stored.digest) and store.has(stored.digest)
    assert directory_digest(store.local_path(stored.uri)) == stored.digest

    # A rerun of the same commit and arguments waits for the same runs, compiles and uploads nothing.
    runs, uploads = len(cluster.runs), sum(r.path.endswith(("upload", "upload_version")) for r in cluster.requests)
    again = runner.run_training(env, pipelines, features.features_uri, {"seed": 7})
    assert again.model_uri == training.model_uri and len(cluster.runs) == runs
    assert sum(r.path.endswith(("upload", "upload_version")) for r in cluster.requests) == uploads
    assert compiles.count("training") == 2 and len(kfp_api._COMPILED) == 2  # asked twice, compiled once
