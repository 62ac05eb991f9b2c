"""Pure parts of the promotion flows: gates, releases of registered versions, retrain's checks on
the promoted release, PR bodies, the fault hook."""

import subprocess
from dataclasses import replace
from types import SimpleNamespace

import pytest

from mlrail import promotion
from mlrail.promotion import PromotionError, evaluate_gates
from mlrail.registry import ModelVersion
from mlrail.release import ModelRef, read_release, write_release

DIGEST = "sha256:" + "ab" * 32
IMAGE = "ghcr.io/my-org/churn-classifier@sha256:" + "cd" * 32
GATES = {"min_accuracy": 0.9, "min_roc_auc": 0.95, "max_regression": 0.01, "max_latency_ms": 500}


def results(*args, **kwargs):
    return {r.gate: r.passed for r in evaluate_gates(*args, **kwargs)}


def test_thresholds_and_latency_without_a_champion():
    got = results(GATES, {"accuracy": 0.95, "roc_auc": 0.97}, None, p95_ms=12.0)
    assert got == {"min_accuracy": True, "min_roc_auc": True, "p95 latency (ms)": True}
    got = results(GATES, {"accuracy": 0.89, "roc_auc": 0.97}, None, p95_ms=900.0)
    assert got["min_accuracy"] is False and got["p95 latency (ms)"] is False


def test_no_regression_beyond_the_tolerance():
    champion = {"accuracy": 0.96, "roc_auc": 0.99}
    assert all(results(GATES, {"accuracy": 0.951, "roc_auc": 0.981}, champion).values())
    got = results(GATES, {"accuracy": 0.949, "roc_auc": 0.99}, champion)
    assert got["accuracy vs champion"] is False and got["roc_auc vs champion"] is True


def test_a_missing_metric_fails_and_an_unknown_gate_is_a_config_error():
    assert results({"min_f1": 0.5}, {"accuracy": 0.9}) == {"min_f1": False}
    with pytest.raises(PromotionError, match=r"staging\.gates\.min-accuracy is not a gate"):
        evaluate_gates({"min-accuracy": 0.9}, {}, where="staging.gates")


def test_a_registered_version_turns_back_into_its_release(project_copy):
    from mlrail import config

    cfg = config.load()
    stored = cfg.local_root / "staging" / "artifacts" / "models" / ("sha256-" + "ab" * 32)
    tags = {
        "pipeline_version": "sha256:" + "cd" * 32,
        "git_commit": "a" * 40,
        "data_snapshot": "sha256:" + "ef" * 32,
        "image": IMAGE,
        "source_digest": "sha256:" + "01" * 32,
        "parameters": '{"features":{"seed":42},"training":{"c":0.5,"n_estimators":7}}',
        "metric.accuracy": "0.97",
        "gates": "passed",
    }
    release = promotion.release_of(cfg, "staging", ModelVersion("m", "4", stored.as_uri(), DIGEST, tags=tags))
    uri = "mlops://staging/artifacts/models/sha256-" + "ab" * 32
    assert release.model == ModelRef("m", "4", DIGEST, uri, "staging:m/4")
    assert (release.commit, release.image, release.gates) == ("a" * 40, IMAGE, "passed")
    assert release.pipeline == tags["pipeline_version"] and release.data_snapshot == tags["data_snapshot"]
    assert release.parameters == {"features": {"seed": 42}, "training": {"c": 0.5, "n_estimators": 7}}
    assert release.metrics == {"accuracy": 0.97}
    with pytest.raises(PromotionError, match="has no image tag"):
        promotion.release_of(cfg, "staging", ModelVersion("m", "5", stored.as_uri(), DIGEST, tags={}))


def git(root, *args):
    argv = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    subprocess.run(argv, cwd=root, check=True, capture_output=True)


def promoted_release(root, **changes):
    """Commit the repository, then commit production's release as a retrain promotion PR writes it."""
    from mlrail import source

    (root / ".gitignore").write_text(".mlops/\nbuild/\n")
    git(root, "init", "-q", "--initial-branch=main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "initial")
    overlay = root / "deploy/overlays/production"
    values = dict(
        commit="a" * 40,
        image=IMAGE,
        source_digest=source.source_digest(root),
        pipeline="sha256:" + "02" * 32,
        model=ModelRef("churn-classifier", source="staging:churn-classifier/3"),
    )
    values.update(changes)
    declared = replace(read_release(overlay), **values)
    write_release(overlay, declared)
    git(root, "commit", "-qam", "Promote staging v3 (retrain)")
    return declared


def test_retrain_forwards_every_parameter_of_the_release(project_copy, monkeypatch):
    """Production trains with exactly the release's parameters, names the example does not have included."""
    from mlrail import config, runner

    parameters = {"features": {"rows": 500, "window_days": 30}, "training": {"c": 0.5, "n_estimators": 7}}
    declared = promoted_release(project_copy, parameters=parameters)
    cfg = config.load()
    compiled_with, seen = [], {}

    def compile_pipelines(cfg, image=None):
        compiled_with.append(image)
        return {"pipeline": declared.pipeline}

    def features(env, pipelines, params, package=None):
        seen["features"] = params
        return SimpleNamespace(rows=1, snapshot="sha256:" + "0" * 64, features_uri=str(project_copy / "f.csv"))

    def training(env, pipelines, features_uri, params, package=None):
        seen["training"] = params
        (project_copy / "model").mkdir()
        snapshot = "sha256:" + "0" * 64
        return SimpleNamespace(model_uri=str(project_copy / "model"), metrics={}, snapshot=snapshot, params=params)

    monkeypatch.setattr(promotion, "compile_pipelines", compile_pipelines)
    # As if the team's pipelines declared these parameters: bind passes them through.
    monkeypatch.setattr(runner, "bind", lambda pipelines, name, given, sources=None: dict(given))
    monkeypatch.setattr(promotion.Flow, "registry", lambda self, env, name: SimpleNamespace(versions=lambda: []))
    monkeypatch.setattr(runner, "run_features", features)
    monkeypatch.setattr(runner, "run_training", training)
    monkeypatch.setenv(promotion.FAULT_VAR, "production:training")  # stop before storing
    with pytest.raises(promotion.InjectedFault):
        promotion._retrain(cfg, promotion.Flow("production", "production", "retrain"), None)
    assert compiled_with == [IMAGE]  # compiled against the release's image
    assert seen == parameters  # every parameter, none dropped or changed by config


def test_retrain_refuses_other_code_another_pipeline_or_an_uncommitted_release(project_copy):
    from mlrail import config, source

    flow = promotion.Flow("production", "production", "retrain")
    promoted_release(project_copy, source_digest="sha256:" + "11" * 32)
    cfg = config.load()
    with pytest.raises(PromotionError, match="names source sha256:111111111111 but main's source is"):
        promotion._retrain(cfg, flow, None)

    overlay = project_copy / "deploy/overlays/production"
    write_release(overlay, replace(read_release(overlay), source_digest=source.source_digest(project_copy)))
    from mlrail.provenance import ProvenanceError

    with pytest.raises(ProvenanceError, match="release.yaml: has uncommitted changes"):
        promotion._retrain(cfg, flow, None)
    git(project_copy, "commit", "-qam", "the real source digest")
    with pytest.raises(PromotionError, match="names pipeline sha256:020202020202 but main compiles to"):
        promotion._retrain(cfg, flow, None)


def test_combined_pipeline_version_is_stable_and_order_free():
    one = promotion.combined_version({"features": "sha256:1", "training": "sha256:2"})
    two = promotion.combined_version({"training": "sha256:2", "features": "sha256:1", "pipeline": "ignored"})
    assert one == two and one.startswith("sha256:")
    assert one != promotion.combined_version({"features": "sha256:1", "training": "sha256:3"})


def test_fault_hook_fires_only_for_its_step(monkeypatch):
    promotion.fault("staging", "register")  # unset: nothing happens
    monkeypatch.setenv(promotion.FAULT_VAR, "staging:register")
    promotion.fault("staging", "store")
    promotion.fault("production", "register")
    with pytest.raises(promotion.InjectedFault, match="after staging step 'register'"):
        promotion.fault("staging", "register")


def test_flow_records_failed_steps_and_timings():
    flow = promotion.Flow("staging", "staging", "transit")
    with flow.step("features", "training") as step:
        step.detail = "ok"
    with pytest.raises(RuntimeError), flow.step("deploy", "serving"):
        raise RuntimeError("boom")
    report = flow.finish()
    assert [(s.step, s.status) for s in report.steps] == [("features", "done"), ("deploy", "failed")]
    assert set(report.timings) >= {"training", "registry", "serving", "total"}


def test_promotion_body_compares_candidate_and_champion(project_copy):
    from mlrail import config

    cfg = config.load()
    tags = {"metric.accuracy": "0.97", "metric.roc_auc": "0.99", "git_commit": "abc", "smoke.p95_ms": "3.2"}
    candidate = ModelVersion("m", "2", "file:///x", DIGEST, tags=tags)
    champion = replace(
        read_release(cfg.root / "deploy/overlays/production"),
        model=ModelRef("m", "1", DIGEST, "s3://b/models/sha256-" + "ab" * 32, "staging:m/1"),
        metrics={"accuracy": 0.95, "roc_auc": 0.99},
    )
    gates = evaluate_gates(GATES, candidate.metrics, champion.metrics, 3.2)
    body = promotion.promotion_body(cfg, candidate, champion, gates, {"deploy/overlays/production/release.yaml": ""})
    assert "| accuracy | 0.9700 | 0.9500 | +0.0200 |" in body
    assert "| accuracy vs champion |" in body and "| git_commit | `abc` |" in body
    assert "make rollback" in body and "p95 3.2 ms" in body


def test_cluster_staging_syncs_its_overlay_and_production_leaves_it_to_the_workflow(project_copy, monkeypatch):
    from mlrail import config, serving
    from mlrail.cluster import sync

    monkeypatch.setenv("MLOPS_BACKEND", "cluster")
    cfg = config.load()
    synced = []

    smoked = []

    def fake_sync(cfg, env, revision=None):
        synced.append((env.name, revision))
        return sync.SyncResult(env.name, "kubectl", env.overlay, revision, "Ready", url="http://isvc.example:8080")

    def fake_smoke(cfg, env_name, url=None):
        smoked.append((env_name, url))
        return SimpleNamespace(passed=True, p95_ms=12.5, url=url, predictions_match=True, failures=(), to_dict=dict)

    monkeypatch.setattr(sync, "sync", fake_sync)
    monkeypatch.setattr(serving, "smoke", fake_smoke)
    staging = promotion.Flow("staging", "staging", "transit")
    # staging syncs to the commit recording its release, then smoke-tests the URL the sync reported
    assert promotion.serve_and_smoke(cfg, staging, cfg.env("staging"), "v1", revision="f" * 40) == 12.5
    assert synced == [("staging", "f" * 40)] and staging.report.endpoint["sync"]["method"] == "kubectl"
    assert smoked == [("staging", "http://isvc.example:8080")]
    assert [(s.step, s.status) for s in staging.report.steps] == [("deploy", "done"), ("smoke", "done")]
    synced = [name for name, _ in synced]
    production = promotion.Flow("production", "production", "transit")
    assert promotion.serve_and_smoke(cfg, production, cfg.env("production"), "v1") is None
    assert synced == ["staging"] and {s.status for s in production.report.steps} == {"skipped"}
