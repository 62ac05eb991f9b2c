"""A real MLServer on 127.0.0.1 serving real MLflow models. The endpoint is started once per
module (pytest runs with --dist loadscope: a module stays on one worker) and always stopped."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow.sklearn
import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from mlflow.models import infer_signature
from mlserver.codecs import PandasCodec
from sklearn.linear_model import LogisticRegression

from example import ROOT
from mlrail import config, mlmodel, serving
from mlrail.artifacts import ArtifactError, ArtifactStore
from mlrail.release import ModelRef, portable_uri, read_release, source_of, write_release

MLRAIL = str(Path(sys.executable).parent / "mlrail")


def other_model(directory: Path) -> Path:
    """A model whose features have nothing in common with the example's: other names, an int column."""
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({"tenure_months": rng.integers(1, 72, 80), "monthly_charges": rng.random(80) * 100})
    target = (frame["monthly_charges"] > 50).astype(int)
    model = LogisticRegression(max_iter=500).fit(frame, target)
    mlflow.sklearn.save_model(
        model,
        str(directory),
        serialization_format="pickle",
        signature=infer_signature(frame, model.predict(frame)),
        input_example=frame.head(4),
        pip_requirements=["scikit-learn"],
    )
    return directory


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project copy with two example models and one with other features in the staging store;
    every endpoint stopped at the end."""
    from churn_classifier.components.features import build_features, load_raw
    from churn_classifier.components.train import save_model, train_model

    root = tmp_path_factory.mktemp("serving-project")
    for folder in ("config", "deploy"):
        shutil.copytree(ROOT / folder, root / folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_BACKEND", "local")
        cfg = config.load(root)
        frame = build_features(load_raw())
        stored = []
        for c in (1.0, 0.05):
            save_model(train_model(frame, c=c), root / f"trained-{c}", frame)
            stored.append(ArtifactStore(cfg.env("staging")).put(root / f"trained-{c}"))
        stored.append(ArtifactStore(cfg.env("staging")).put(other_model(root / "other")))
        try:
            yield cfg, stored
        finally:
            serving.stop_all(cfg)


def point_release(cfg, env_name, stored, version):
    overlay = cfg.root / cfg.env(env_name).overlay
    model = ModelRef(
        cfg.model_name,
        version,
        stored.digest,
        portable_uri(stored.uri, cfg.local_root),
        source_of(env_name, cfg.model_name, version),
    )
    write_release(overlay, read_release(overlay).with_model(model))


@pytest.fixture()
def served(project):
    """The staging endpoint serving the first model (a no-op when it already is)."""
    cfg, stored = project
    point_release(cfg, "staging", stored[0], "1")
    status = serving.deploy_from_overlay(cfg, "staging")
    return cfg, status, stored, Path(status.model_dir)


def v2_post(url, name, body):
    return requests.post(f"{url}/v2/models/{name}/infer", json=body, timeout=(5, 20))


def test_the_endpoint_advertises_the_models_signature(served):
    cfg, status, _, model_dir = served
    meta = requests.get(f"{status.url}/v2/models/{cfg.model_name}", timeout=(5, 20)).json()
    signature = mlmodel.mlflow_signature(model_dir)
    assert [t["name"] for t in meta["inputs"]] == signature.inputs.input_names()
    assert {(t["datatype"], tuple(t["shape"])) for t in meta["inputs"]} == {("FP64", (-1, 1))}
    assert [(t["datatype"], t["shape"]) for t in meta["outputs"]] == [("INT64", [-1])]
    assert meta["versions"] == ["1"] and meta["platform"] == "mlflow"


def test_the_endpoint_predicts_like_the_model_directory(served):
    cfg, status, _, model_dir = served
    example = mlmodel.input_example_frame(model_dir)
    offline = mlmodel.load_pyfunc(model_dir).predict(example)
    assert serving.predict(status.url, cfg.model_name, example) == np.asarray(offline).tolist()
    request = serving.input_example(model_dir)  # encoded with MLServer's PandasCodec
    assert [i.name for i in request.inputs] == list(example.columns)
    response = serving.infer(status.url, cfg.model_name, request)
    assert response.model_version == "1" and serving.decode_outputs(response)[0].reshape(-1).tolist() == list(offline)
    assert status.version == "1" and status.url.startswith("http://127.0.0.1:")
    state = json.loads((cfg.env("staging").local_dir / "serving" / "state.json").read_text())
    assert state["pid"] == status.pid and state["digest"] == status.digest


def test_a_request_that_does_not_match_the_signature_gets_a_json_422_naming_it(served):
    cfg, status, _, model_dir = served
    example = mlmodel.input_example_frame(model_dir)
    first, second = example.columns[:2]
    good = PandasCodec.encode_request(example).model_dump(exclude_none=True)
    assert v2_post(status.url, cfg.model_name, good).status_code == 200

    def sent(change) -> tuple[int, str, str]:
        body = json.loads(json.dumps(good))
        change(body["inputs"])
        answer = v2_post(status.url, cfg.model_name, body)
        return answer.status_code, answer.headers["content-type"], answer.json()["error"]

    def rename(inputs):
        inputs[0]["name"] = "not_a_feature"

    code, kind, error = sent(rename)
    assert (code, kind) == (422, "application/json")
    assert f"missing input {first}" in error and "unexpected input not_a_feature" in error
    code, _, error = sent(lambda inputs: inputs.pop(1))
    assert code == 422 and f"missing input {second}" in error and "the model takes" in error

    def as_text(inputs):
        inputs[0].update(datatype="BYTES", data=["x"] * len(example))

    code, _, error = sent(as_text)
    assert code == 422 and f"input {first} is BYTES, expected FP64" in error

    def short_column(inputs):
        inputs[1].update(shape=[1, 1], data=inputs[1]["data"][:1])

    code, _, error = sent(short_column)
    assert code == 422 and "columns differ in length" in error and f"{second} has 1 rows" in error

    def wrong_count(inputs):
        inputs[0]["data"] = inputs[0]["data"][:-1]

    code, _, error = sent(wrong_count)
    assert code == 422 and f"input {first} has shape" in error
    with pytest.raises(serving.ServingError, match=r"answered 422: the request does not match"):
        serving.infer(status.url, cfg.model_name, example.drop(columns=[first]))


def test_kserves_stock_mlflow_runtime_answers_a_mismatch_with_a_text_500(project, monkeypatch):
    """What the cluster does with the same request (KServe runs the stock runtime for
    `modelFormat: mlflow`): why the local endpoint uses SignatureRuntime."""
    cfg, stored = project
    staging, production = ArtifactStore(cfg.env("staging")), ArtifactStore(cfg.env("production"))
    copied = production.copy_from(staging, stored[0].uri, stored[0].digest)
    monkeypatch.setattr(serving, "RUNTIME", "mlserver_mlflow.MLflowRuntime")
    endpoint = serving.LocalEndpoint(cfg.env("production"), cfg.model_name)
    try:
        status = endpoint.deploy(production.local_path(copied.uri), "1", copied.digest)
        example = mlmodel.input_example_frame(status.model_dir)
        body = PandasCodec.encode_request(example.drop(columns=example.columns[:1])).model_dump(exclude_none=True)
        answer = v2_post(status.url, cfg.model_name, body)
        assert answer.status_code == 500 and answer.headers["content-type"].startswith("text/plain")
    finally:
        endpoint.stop()


def test_smoke_passes_on_a_healthy_endpoint(served):
    cfg, status, _, _ = served
    report = serving.smoke(cfg, "staging", samples=12)
    assert report.passed, report.failures
    assert report.ready and report.metadata_ok and report.schema_ok and report.predictions_match
    assert report.samples == 12 and 0 < report.p95_ms <= report.max_latency_ms == 500
    assert report.example_rows == 5 and report.inputs[0] == "mean_radius"
    assert report.to_dict()["failures"] == [] and report.digest == status.digest


def test_smoke_passes_for_a_model_with_other_features_without_the_teams_feature_code(project):
    """A rollback to a model trained on other features: smoke sends that model's own example."""
    cfg, stored = project
    point_release(cfg, "staging", stored[2], "3")
    status = serving.deploy_from_overlay(cfg, "staging")
    meta = requests.get(f"{status.url}/v2/models/{cfg.model_name}", timeout=(5, 20)).json()
    assert [(t["name"], t["datatype"]) for t in meta["inputs"]] == [
        ("tenure_months", "INT64"),
        ("monthly_charges", "FP64"),
    ]
    code = (
        "import sys; from mlrail import config, serving; "
        "report = serving.smoke(config.load(), 'staging', samples=5); "
        "print(report.passed, report.failures, sorted(m for m in sys.modules if m.startswith('churn_classifier')))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the team's package is not importable
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=cfg.root, env={**env, "MLOPS_BACKEND": "local"}, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.stdout.strip() == "True () []", done.stderr[-2000:]
    point_release(cfg, "staging", stored[0], "1")


class HangingServer:
    """Accepts connections on 127.0.0.1 and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture()
def hanging():
    server = HangingServer()
    yield server
    server.close()


def test_a_hanging_endpoint_fails_smoke_within_the_deadline(served, hanging):
    cfg, _, _, model_dir = served
    timeouts = serving.Timeouts(connect_s=1, read_s=1, ready_s=3, deadline_s=3)
    began = time.monotonic()
    report = serving.smoke_endpoint(hanging.url, cfg.model_name, model_dir, timeouts=timeouts)
    assert time.monotonic() - began < 6
    assert not report.passed and not report.ready and "is not ready after 3s" in report.failures[0]
    began = time.monotonic()
    with pytest.raises(serving.ServingError, match=r"did not answer within 1s \(timeouts.read_s\)"):
        serving.infer(hanging.url, cfg.model_name, mlmodel.input_example_frame(model_dir), timeouts=timeouts)
    assert time.monotonic() - began < 3


def cluster_config(cfg, endpoint_url: str, timeouts: dict):
    """A copy of the project (its releases included) with staging on the cluster backend: its
    endpoint at `endpoint_url`, its store the local staging folder, and `timeouts:` as given."""
    path = cfg.root / "config" / "environments.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["local_root"] = str(cfg.local_root)  # the same local root: the releases' mlops:// URIs resolve alike
    staging = doc["environments"]["staging"]
    staging["backend"] = "cluster"
    staging["cluster"]["endpoint_url"] = endpoint_url
    staging["cluster"]["artifact_root"] = (cfg.env("staging").local_dir / "artifacts").as_uri()
    doc["timeouts"] = {**(doc.get("timeouts") or {}), **timeouts}
    copy = cfg.root.parent / f"{cfg.root.name}-cluster"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(cfg.root / "deploy", copy / "deploy")
    (copy / "config").mkdir()
    (copy / "config" / "environments.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return config.load(copy)


def test_smoke_on_the_cluster_backend_checks_the_endpoint_url_with_the_stores_model(served, hanging, monkeypatch):
    cfg, status, _, _ = served
    monkeypatch.delenv("MLOPS_BACKEND")
    # A synced InferenceService answering at cluster.endpoint_url (here the staging MLServer).
    cluster = cluster_config(cfg, status.url, {})
    assert cluster.env("staging").backend == "cluster"
    report = serving.smoke(cluster, "staging", samples=3)
    assert report.passed, report.failures
    assert report.version == "1" and report.digest == status.digest
    # The same endpoint hanging: bounded by `timeouts:` in config/environments.yaml.
    cluster = cluster_config(cfg, hanging.url, {"connect_s": 1, "read_s": 1, "ready_s": 2, "deadline_s": 2})
    began = time.monotonic()
    report = serving.smoke(cluster, "staging", samples=3)
    assert not report.passed and "not ready after 2s" in report.failures[0] and time.monotonic() - began < 5


def test_deploying_the_same_model_again_does_not_restart(served):
    cfg, status, _, _ = served
    assert serving.deploy_from_overlay(cfg, "staging") == status


def test_a_mismatched_or_missing_model_is_refused_and_serving_does_not_switch(served):
    cfg, status, stored, _ = served
    overlay = cfg.root / cfg.env("staging").overlay
    release = read_release(overlay)
    ref = release.model

    def declare(digest, uri):
        write_release(overlay, release.with_model(ModelRef(ref.name, "2", digest, uri, ref.source)))

    declare(stored[1].digest, ref.storage_uri)
    with pytest.raises(ArtifactError, match="does not match digest"):
        serving.deploy_from_overlay(cfg, "staging")
    absent = "sha256:" + "0" * 64
    declare(absent, portable_uri(ArtifactStore(cfg.env("staging")).uri_for(absent), cfg.local_root))
    with pytest.raises(ArtifactError, match="missing from the store"):
        serving.deploy_from_overlay(cfg, "staging")
    production = ArtifactStore(cfg.env("production")).uri_for(stored[0].digest)
    declare(stored[0].digest, portable_uri(production, cfg.local_root))
    with pytest.raises(ArtifactError, match="not in the staging store"):
        serving.deploy_from_overlay(cfg, "staging")
    assert serving.endpoints(cfg)["staging"] == status  # still serving the verified model
    write_release(overlay, release)


def test_an_empty_release_and_a_non_serving_environment_are_refused(project):
    cfg, _ = project
    with pytest.raises(serving.ServingError, match=r"release.yaml declares no model yet \(modelVersion: none\)"):
        serving.deploy_from_overlay(cfg, "production")
    with pytest.raises(serving.ServingError, match="sandbox serves no model"):
        serving.deploy_from_overlay(cfg, "sandbox")


def test_a_directory_that_is_not_an_mlflow_model_is_refused(served, tmp_path):
    cfg, status, _, model_dir = served
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "model.joblib").write_bytes(b"weights")
    stored = ArtifactStore(cfg.env("staging")).put(plain)
    endpoint = serving.LocalEndpoint(cfg.env("staging"), cfg.model_name)
    with pytest.raises(serving.ServingError, match="holds no MLmodel: the model must be an MLflow model"):
        endpoint.deploy(ArtifactStore(cfg.env("staging")).local_path(stored.uri), "3", stored.digest)
    unsigned = tmp_path / "unsigned"
    shutil.copytree(model_dir, unsigned)
    mlmodel_file = unsigned / "MLmodel"
    mlmodel_file.chmod(0o644)
    doc = yaml.safe_load(mlmodel_file.read_text())
    del doc["signature"]
    mlmodel_file.write_text(yaml.safe_dump(doc))
    with pytest.raises(mlmodel.ModelFormatError, match=r"has no signature \(inputs\); save it with"):
        mlmodel.check_model_dir(unsigned)


def test_a_model_that_fails_to_load_reports_the_log_and_keeps_the_old_endpoint(served, tmp_path):
    cfg, status, _, model_dir = served
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "model.pkl").chmod(0o644)
    (broken / "model.pkl").write_bytes(b"not a pickle")
    stored = ArtifactStore(cfg.env("staging")).put(broken)
    endpoint = serving.LocalEndpoint(cfg.env("staging"), cfg.model_name)
    with pytest.raises(serving.ServingError, match="not the sha256:"):  # the digest must describe the folder
        endpoint.deploy(ArtifactStore(cfg.env("staging")).local_path(stored.uri), "3", status.digest)
    with pytest.raises(serving.ServingError, match="MLServer did not become ready") as caught:
        endpoint.deploy(ArtifactStore(cfg.env("staging")).local_path(stored.uri), "3", stored.digest, timeout=60)
    assert "mlserver.log" in str(caught.value) and "\n" in str(caught.value)  # the log tail
    assert endpoint.status() == status and endpoint.ready()


def test_a_new_model_switches_blue_green_and_smoke_checks_the_release(served):
    cfg, old, stored, _ = served
    point_release(cfg, "staging", stored[1], "2")
    report = serving.smoke(cfg, "staging", samples=3)  # the endpoint still serves version 1
    assert not report.passed and not report.serves_overlay and "release.yaml declares version 2" in report.failures[0]
    new = serving.deploy_from_overlay(cfg, "staging")
    assert (new.version, new.digest) == ("2", stored[1].digest) and new.pid != old.pid and new.url != old.url
    old_dir = cfg.env("staging").local_dir / "serving" / f"server-{old.url.rsplit(':', 1)[1]}"
    assert not serving._alive(old.pid, str(old_dir)) and not old_dir.exists()
    assert serving.smoke(cfg, "staging", samples=3).passed
    assert [p.name for p in (cfg.env("staging").local_dir / "serving").glob("server-*")] == [
        f"server-{new.url.rsplit(':', 1)[1]}"
    ]


def test_concurrent_deploys_start_one_server(project):
    cfg, stored = project
    serving.stop_all(cfg)
    point_release(cfg, "staging", stored[0], "1")
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: serving.deploy_from_overlay(cfg, "staging"), range(2))
    assert first == second  # the second waited for the first, then found it serving
    assert len(list((cfg.env("staging").local_dir / "serving").glob("server-*"))) == 1


def test_a_held_lock_fails_within_its_timeout(project):
    cfg, _ = project
    folder = cfg.env("staging").local_dir / "serving"
    held = threading.Event()
    release = threading.Event()

    def hold():
        with serving._locked(folder, 5):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        held.wait(5)
        began = time.monotonic()
        lock_error = r"another serve or stop has held .*\.lock for more than 1s"
        with pytest.raises(serving.ServingError, match=lock_error), serving._locked(folder, 1):
            pass
        assert time.monotonic() - began < 3
    finally:
        release.set()
        thread.join()


def test_stop_and_stale_state(project, tmp_path):
    cfg, _ = project
    endpoint = serving.LocalEndpoint(cfg.env("staging"), cfg.model_name)
    status = endpoint.status() or serving.deploy_from_overlay(cfg, "staging")
    assert endpoint.stop() is True and endpoint.status() is None and endpoint.stop() is False
    with pytest.raises(serving.ServingError, match="unreachable"):
        serving.infer(status.url, cfg.model_name, mlmodel.input_example_frame(status.model_dir))
    with pytest.raises(serving.ServingError, match="no staging endpoint is running"):
        serving.smoke(cfg, "staging")
    state = endpoint.state_path
    state.parent.mkdir(parents=True, exist_ok=True)
    precious = tmp_path / "precious"
    precious.mkdir()
    state.write_text(json.dumps({**status.to_dict(), "server_dir": str(precious)}))
    assert endpoint.status() is None and not state.exists()  # a dead pid's state is cleaned up
    assert precious.is_dir()  # only folders inside the serving directory are ever deleted
    assert serving.endpoints(cfg) == {"sandbox": None, "staging": None, "production": None}


def run_cli(cfg, *args, timeout=180):
    return subprocess.run(
        [MLRAIL, *args], cwd=cfg.root, env=dict(os.environ, MLOPS_BACKEND="local"), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def test_cli_serve_returns_while_the_endpoint_keeps_serving(project):
    cfg, stored = project
    staging, production = ArtifactStore(cfg.env("staging")), ArtifactStore(cfg.env("production"))
    copied = production.copy_from(staging, stored[0].uri, stored[0].digest)
    point_release(cfg, "production", copied, "1")
    done = run_cli(cfg, "serve", "--env", "production")
    assert done.returncode == 0, done.stderr
    assert "| production | serving | http://127.0.0.1:" in done.stdout
    status = serving.endpoints(cfg)["production"]  # the command exited; its server did not
    assert status is not None and status.digest == copied.digest
    assert serving.predict(status.url, cfg.model_name, mlmodel.input_example_frame(status.model_dir))[0] in (0, 1)
    done = run_cli(cfg, "smoke", "--env", "production", "--samples", "5")
    assert done.returncode == 0 and "smoke test passed for production" in done.stdout, done.stdout + done.stderr
    done = run_cli(cfg, "stop")
    assert done.returncode == 0 and "stopped: production" in done.stdout
    done = run_cli(cfg, "smoke", "--env", "production")
    assert done.returncode == 1 and "no production endpoint is running" in done.stderr


def test_a_serve_killed_mid_start_leaves_a_server_that_stop_finds(project):
    cfg, stored = project
    staging, production = ArtifactStore(cfg.env("staging")), ArtifactStore(cfg.env("production"))
    copied = production.copy_from(staging, stored[1].uri, stored[1].digest)
    point_release(cfg, "production", copied, "2")
    folder = cfg.env("production").local_dir / "serving"
    command = subprocess.Popen(
        [MLRAIL, "serve", "--env", "production"],
        cwd=cfg.root,
        env=dict(os.environ, MLOPS_BACKEND="local"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        orphans: list[tuple[int, str]] = []
        while not orphans and time.monotonic() < deadline:
            servers = folder.glob("server-*")
            orphans = [(pid, str(server)) for server in servers for pid in serving._pids_serving(server)]
            time.sleep(0.02)
        assert orphans, "the server never started"
    finally:
        command.send_signal(signal.SIGKILL)  # killed before it could record (or stop) its server
        command.wait()
    assert not (folder / "state.json").exists() and serving.endpoints(cfg)["production"] is None
    assert serving.LocalEndpoint(cfg.env("production"), cfg.model_name).stop() is True
    assert not any(serving._alive(pid, server) for pid, server in orphans)  # gone (or a zombie for init to reap)
    assert not list(folder.glob("server-*"))
