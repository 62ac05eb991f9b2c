"""A real MLServer on 127.0.0.1 serving a real trained model. The endpoint is started once per
module (pytest runs with --dist loadscope: a module stays on one worker) and always stopped."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from mlrail import cli, config, serving
from mlrail.artifacts import ArtifactError, ArtifactStore
from churn_classifier.components import train
from churn_classifier.components.features import SPLIT, build_features, feature_columns, load_raw
from churn_classifier.components.train import load_model, save_model, train_model
from mlrail.modelref import ModelRef, read_model_ref, write_model_ref

from example import ROOT


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project copy with two trained models in the staging store; every endpoint stopped at the end."""
    root = tmp_path_factory.mktemp("serving-project")
    for folder in ("config", "deploy"):
        shutil.copytree(ROOT / folder, root / folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLOPS_BACKEND", "local")
        cfg = config.load(root)
        frame = build_features(load_raw())
        stored = []
        for c in (1.0, 0.05):
            save_model(train_model(frame, c=c), root / f"trained-{c}")
            stored.append(ArtifactStore(cfg.env("staging")).put(root / f"trained-{c}"))
        try:
            yield cfg, stored, frame
        finally:
            serving.stop_all(cfg)


def point_overlay(cfg, env_name, stored, version):
    ref = ModelRef(cfg.model_name, version, stored.digest, stored.uri, f"{env_name} registry version {version}")
    write_model_ref(cfg.root / cfg.env(env_name).overlay, ref)


@pytest.fixture()
def served(project):
    """The staging endpoint serving the first model (a no-op when it already is)."""
    cfg, stored, frame = project
    point_overlay(cfg, "staging", stored[0], "1")
    return cfg, serving.deploy_from_overlay(cfg, "staging"), stored, frame


def test_serving_loads_the_file_train_saves():
    assert serving.MODEL_FILE == train.MODEL_FILE


def test_the_endpoint_predicts_like_the_model_file(served):
    cfg, status, stored, frame = served
    test = frame[frame[SPLIT] == "test"].head(7)
    rows = test[feature_columns(frame)].to_numpy().tolist()
    model = load_model(ArtifactStore(cfg.env("staging")).local_path(stored[0].uri))
    assert serving.infer(status.url, cfg.model_name, rows) == model.predict(np.asarray(rows)).tolist()
    proba = serving.infer(status.url, cfg.model_name, rows, output="predict_proba")
    assert np.allclose(proba, model.predict_proba(np.asarray(rows)), atol=1e-12)
    assert status.version == "1" and status.digest == stored[0].digest and status.url.startswith("http://127.0.0.1:")
    state = json.loads((cfg.env("staging").local_dir / "serving" / "state.json").read_text())
    assert state["pid"] == status.pid and state["digest"] == status.digest


def test_smoke_passes_on_a_healthy_endpoint(served):
    cfg, status, _, _ = served
    report = serving.smoke(cfg, "staging", samples=12)
    assert report.passed, report.failures
    assert report.ready and report.metadata_ok and report.schema_ok and report.predictions_match
    assert report.samples == 12 and 0 < report.p95_ms <= report.max_latency_ms == 500
    assert report.to_dict()["failures"] == [] and report.digest == status.digest


def test_deploying_the_same_model_again_does_not_restart(served):
    cfg, status, _, _ = served
    assert serving.deploy_from_overlay(cfg, "staging") == status


def test_a_mismatched_or_missing_model_is_refused_and_serving_does_not_switch(served):
    cfg, status, stored, _ = served
    overlay = cfg.root / cfg.env("staging").overlay
    ref = read_model_ref(overlay)
    write_model_ref(overlay, ModelRef(ref.name, "2", stored[1].digest, stored[0].uri, ref.source))
    with pytest.raises(ArtifactError, match="does not match digest"):
        serving.deploy_from_overlay(cfg, "staging")
    absent = "sha256:" + "0" * 64
    uri = ArtifactStore(cfg.env("staging")).uri_for(absent)
    write_model_ref(overlay, ModelRef(ref.name, "2", absent, uri, ref.source))
    with pytest.raises(ArtifactError, match="missing from the store"):
        serving.deploy_from_overlay(cfg, "staging")
    production = ArtifactStore(cfg.env("production")).uri_for(stored[0].digest)
    write_model_ref(overlay, ModelRef(ref.name, "2", stored[0].digest, production, ref.source))
    with pytest.raises(ArtifactError, match="not in the staging store"):
        serving.deploy_from_overlay(cfg, "staging")
    assert serving.endpoints(cfg)["staging"] == status  # still serving the verified model
    write_model_ref(overlay, ref)


def test_an_empty_reference_and_a_non_serving_environment_are_refused(project):
    cfg, _, _ = project
    with pytest.raises(serving.ServingError, match=r"declares no model yet \(version: none\)"):
        serving.deploy_from_overlay(cfg, "production")
    with pytest.raises(serving.ServingError, match="sandbox serves no model"):
        serving.deploy_from_overlay(cfg, "sandbox")


def test_a_model_that_fails_to_load_reports_the_log_and_keeps_the_old_endpoint(served, tmp_path):
    cfg, status, _, _ = served
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.joblib").write_bytes(b"not a joblib file")
    stored = ArtifactStore(cfg.env("staging")).put(broken)
    endpoint = serving.LocalEndpoint(cfg.env("staging"), cfg.model_name)
    with pytest.raises(serving.ServingError, match="not the sha256:"):  # the digest must describe the folder
        endpoint.deploy(ArtifactStore(cfg.env("staging")).local_path(stored.uri), "3", status.digest)
    with pytest.raises(serving.ServingError, match="MLServer did not become ready") as caught:
        endpoint.deploy(ArtifactStore(cfg.env("staging")).local_path(stored.uri), "3", stored.digest, timeout=60)
    assert "mlserver.log" in str(caught.value) and "\n" in str(caught.value)  # the log tail
    assert endpoint.status() == status and endpoint.ready()


def test_a_new_model_switches_blue_green_and_smoke_checks_the_overlay(served):
    cfg, old, stored, _ = served
    point_overlay(cfg, "staging", stored[1], "2")
    report = serving.smoke(cfg, "staging", samples=3)  # the endpoint still serves version 1
    assert not report.passed and not report.serves_overlay and "model.yaml names version 2" in report.failures[0]
    new = serving.deploy_from_overlay(cfg, "staging")
    assert (new.version, new.digest) == ("2", stored[1].digest) and new.pid != old.pid and new.url != old.url
    old_dir = cfg.env("staging").local_dir / "serving" / f"server-{old.url.rsplit(':', 1)[1]}"
    assert not serving._alive(old.pid, str(old_dir)) and not old_dir.exists()
    assert serving.smoke(cfg, "staging", samples=3).passed
    assert [p.name for p in (cfg.env("staging").local_dir / "serving").glob("server-*")] == [
        f"server-{new.url.rsplit(':', 1)[1]}"
    ]


def test_concurrent_deploys_start_one_server(project):
    cfg, stored, _ = project
    serving.stop_all(cfg)
    point_overlay(cfg, "staging", stored[0], "1")
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(lambda _: serving.deploy_from_overlay(cfg, "staging"), range(2))
    assert first == second  # the second waited for the first, then found it serving
    assert len(list((cfg.env("staging").local_dir / "serving").glob("server-*"))) == 1


def test_stop_and_stale_state(project, tmp_path):
    cfg, _, _ = project
    endpoint = serving.LocalEndpoint(cfg.env("staging"), cfg.model_name)
    status = endpoint.status() or serving.deploy_from_overlay(cfg, "staging")
    assert endpoint.stop() is True and endpoint.status() is None and endpoint.stop() is False
    with pytest.raises(serving.ServingError, match="unreachable"):
        serving.infer(status.url, cfg.model_name, [[0.0] * 34], timeout=2)
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


def test_cli_serve_returns_while_the_endpoint_keeps_serving(project, monkeypatch, capsys):
    cfg, stored, _ = project
    staging, production = ArtifactStore(cfg.env("staging")), ArtifactStore(cfg.env("production"))
    copied = production.copy_from(staging, stored[0].uri, stored[0].digest)
    point_overlay(cfg, "production", copied, "1")
    env = dict(os.environ, MLOPS_BACKEND="local")
    done = subprocess.run(
        [sys.executable, "-m", "mlrail.cli", "serve", "--env", "production"],
        cwd=cfg.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert "| production | serving | http://127.0.0.1:" in done.stdout
    status = serving.endpoints(cfg)["production"]  # the command exited; its server did not
    assert status is not None and status.digest == copied.digest
    assert serving.infer(status.url, cfg.model_name, [[0.0] * 34]) in ([0], [1])
    monkeypatch.chdir(cfg.root)
    assert cli.main(["smoke", "--env", "production", "--samples", "5"]) == 0
    assert "smoke test passed for production" in capsys.readouterr().out
    assert cli.main(["endpoints"]) == 0
    assert "| production | serving |" in capsys.readouterr().out
    assert cli.main(["stop"]) == 0
    assert "stopped: production" in capsys.readouterr().out
    assert cli.main(["smoke", "--env", "production"]) == 1
    assert "error: no production endpoint is running" in capsys.readouterr().err


def test_a_serve_killed_mid_start_leaves_a_server_that_stop_finds(project):
    cfg, stored, _ = project
    staging, production = ArtifactStore(cfg.env("staging")), ArtifactStore(cfg.env("production"))
    copied = production.copy_from(staging, stored[1].uri, stored[1].digest)
    point_overlay(cfg, "production", copied, "2")
    folder = cfg.env("production").local_dir / "serving"
    command = subprocess.Popen(
        [sys.executable, "-m", "mlrail.cli", "serve", "--env", "production"],
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
