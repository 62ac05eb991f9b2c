"""Pure parts of the promotion flows: gates, model references, pipeline specs, PR bodies, the fault hook."""

import pytest

from mlrail import promotion
from mlrail.modelref import ModelRef, ModelRefError, render_model_ref
from mlrail.promotion import PromotionError, evaluate_gates
from mlrail.registry import ModelVersion

DIGEST = "sha256:" + "ab" * 32
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


def test_source_round_trip_and_bad_sources():
    assert promotion.parse_source(promotion.source_of("staging", "churn-classifier", "3")) == (
        "staging",
        "churn-classifier",
        "3",
    )
    for bad in ("none", "staging:churn-classifier", "staging:churn-classifier/x", ":m/1"):
        with pytest.raises(PromotionError, match="is not of the form <env>:<model name>/<version>"):
            promotion.parse_source(bad)


def test_model_reference_from_committed_text():
    ref = ModelRef("m", "2", DIGEST, "file:///s/models/sha256-" + "ab" * 32, "staging:m/2")
    assert promotion.ref_from_text(render_model_ref(ref), "x") == ref
    with pytest.raises(ModelRefError, match="data.digest is missing"):
        promotion.ref_from_text("kind: ConfigMap\ndata: {name: m, version: '1'}\n", "x")
    with pytest.raises(ModelRefError, match="expected sha256"):
        promotion.ref_from_text(render_model_ref(ref).replace(DIGEST, "sha256:zz"), "x")


def test_pipeline_spec_round_trip_and_validation():
    candidate = ModelVersion(
        "m",
        "4",
        "file:///x",
        DIGEST,
        tags={"pipeline_version": "sha256:" + "cd" * 32, "param.c": "0.5", "param.max_iter": "1000", "git_commit": "a"},
    )
    spec = promotion.pipeline_spec(candidate)
    assert spec["parameters"] == {"c": 0.5, "max_iter": 1000}
    assert spec["validated"]["version"] == "4"
    text = promotion.render_pipeline_spec(spec)
    assert text.startswith("# ") and promotion.read_pipeline_spec(text, "p.yaml") == spec
    assert promotion.read_pipeline_spec(None, "p.yaml") is None
    with pytest.raises(PromotionError, match="p.yaml: pipeline_version is missing"):
        promotion.read_pipeline_spec("parameters: {}\n", "p.yaml")
    with pytest.raises(PromotionError, match="not valid YAML"):
        promotion.read_pipeline_spec("a: [", "p.yaml")


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
    champion = ModelVersion("m", "1", "file:///y", DIGEST, tags={"metric.accuracy": "0.95", "metric.roc_auc": "0.99"})
    gates = evaluate_gates(GATES, candidate.metrics, champion.metrics, 3.2)
    body = promotion.promotion_body(cfg, candidate, champion, gates, {"deploy/overlays/production/model.yaml": ""})
    assert "| accuracy | 0.9700 | 0.9500 | +0.0200 |" in body
    assert "| accuracy vs champion |" in body and "| git_commit | `abc` |" in body
    assert "make rollback" in body and "p95 3.2 ms" in body


def test_cluster_staging_syncs_its_overlay_and_production_leaves_it_to_the_workflow(project_copy, monkeypatch):
    from mlrail import config
    from mlrail.cluster import sync

    monkeypatch.setenv("MLOPS_BACKEND", "cluster")
    cfg = config.load()
    synced = []

    def fake_sync(cfg, env):
        synced.append(env.name)
        return sync.SyncResult(env.name, "kubectl", env.overlay, "abc", "InferenceService ready")

    monkeypatch.setattr(sync, "sync", fake_sync)
    staging = promotion.Flow("staging", "staging", "transit")
    assert promotion.serve_and_smoke(cfg, staging, cfg.env("staging"), "v1") is None
    assert synced == ["staging"] and staging.report.endpoint["sync"]["method"] == "kubectl"
    assert [(s.step, s.status) for s in staging.report.steps] == [("deploy", "done"), ("smoke", "skipped")]
    production = promotion.Flow("production", "production", "transit")
    assert promotion.serve_and_smoke(cfg, production, cfg.env("production"), "v1") is None
    assert synced == ["staging"] and {s.status for s in production.report.steps} == {"skipped"}
