"""The retrain pattern end to end on the local backend: the promotion PR names the compiled
pipeline that passed staging; production trains with exactly it, gates the result and proposes
(or, with auto_merge, merges) the deployment PR. A crash is injected after every production step
and each rerun must converge; a rollback neither retrains nor re-proposes."""

import pytest

import lifecycle_support as support
from mlrail import config, gitops, promotion
from mlrail.registry import Registry

# fixtures (pytest finds them by name in this module) and helpers
blank_registry_db = support.blank_registry_db
lifecycle = support.lifecycle
crash_after_each = support.crash_after_each
served_digest = support.served_digest
versions = support.versions
PRODUCTION_RELEASE = support.PRODUCTION_RELEASE
STAGING_RELEASE = support.STAGING_RELEASE


@pytest.mark.slow
def test_retrain_trains_the_validated_pipeline_in_production(lifecycle, monkeypatch):
    cfg = lifecycle("retrain")
    pulls = gitops.pull_requests(cfg)

    staged = promotion.run_staging(cfg)
    (pr,) = pulls.list()
    assert pr.files == [PRODUCTION_RELEASE, STAGING_RELEASE]
    # the promotion names the code and pipeline staging validated, and no model yet
    spec = promotion.release_from_text(gitops.show(cfg.root, pr.head, PRODUCTION_RELEASE), "promotion PR")
    assert spec.model.is_empty and spec.model.source == f"staging:{cfg.model_name}/{staged.model['version']}"
    assert spec.pipeline == staged.model["lineage"]["pipeline_version"]
    (candidate,) = versions(cfg, "staging")
    assert spec.image == candidate.tags["image"] == f"{cfg.image}@{candidate.tags['source_digest']}"
    assert spec.parameters["training"]["c"] == 1.0 and set(spec.parameters) == {"features", "training"}

    # merging the promotion trains in production and opens the deployment PR (auto_merge: false)
    pulls.merge(pr.number)
    first = promotion.run_production(cfg)
    (trained,) = versions(cfg, "production")
    assert trained.tags["pipeline_version"] == spec.pipeline and trained.tags["image"] == spec.image
    assert trained.tags["validated_by"] == f"staging:{cfg.model_name}/{staged.model['version']}"
    deploy_pr = pulls.get(first.pull_request["number"])
    assert deploy_pr.state == "open" and deploy_pr.files == [PRODUCTION_RELEASE]
    deployed = promotion.release_from_text(gitops.show(cfg.root, deploy_pr.head, PRODUCTION_RELEASE), "deployment PR")
    assert deployed.model.digest == trained.digest and deployed.gates == "passed"
    assert promotion.same_code(deployed, spec) and deployed.model.storage_uri.startswith("mlops://production/")
    assert served_digest(cfg, "production") is None  # nothing serves before the deployment PR merges
    rerun = promotion.run_production(cfg)  # no retraining, no second PR
    assert {s.step: s.status for s in rerun.steps}["training"] == "skipped"
    assert len(versions(cfg, "production")) == 1 and len(pulls.list()) == 2

    pulls.merge(deploy_pr.number)
    promotion.run_production(cfg)
    assert served_digest(cfg, "production") == trained.digest
    production_registry = Registry(cfg.env("production"), cfg.model_name)
    assert production_registry.alias("champion").version == trained.version
    assert production_registry.alias("challenger") is None  # it serves now: no longer a challenger

    # a second pipeline run promoted with auto_merge: crash after every production step
    text = (cfg.root / "config/environments.yaml").read_text()
    (cfg.root / "config/environments.yaml").write_text(text.replace("auto_merge: false", "auto_merge: true"))
    cfg = config.load(cfg.root)
    second = promotion.run_staging(cfg, {"c": 0.5})
    pulls.merge(second.pull_request["number"])
    steps = promotion.RETRAIN_STEPS + promotion.PRODUCTION_SERVE_STEPS
    crash_after_each(monkeypatch, "production", steps, lambda: promotion.run_production(cfg))
    assert len(versions(cfg, "production")) == 2
    new = versions(cfg, "production")[-1]
    assert served_digest(cfg, "production") == new.digest != trained.digest
    assert [p.state for p in pulls.list()] == ["merged"] * 4  # promote, deploy, promote, deploy (auto-merged)

    # rollback: production serves the first model again and does not retrain or re-propose
    pr, target = promotion.open_rollback(cfg)
    assert target.model.digest == trained.digest and pr.files == [PRODUCTION_RELEASE]
    pulls.merge(pr.number)
    after = promotion.run_production(cfg)
    assert {s.step: s.status for s in after.steps}["pull-request"] == "skipped"
    assert served_digest(cfg, "production") == trained.digest
    assert len(versions(cfg, "production")) == 2 and len(pulls.list()) == 5
