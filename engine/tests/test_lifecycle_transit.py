"""The transit pattern end to end on the local backend: staging trains once, production copies
the validated model. A crash is injected after every step of the staging and production flows
(MLOPS_FAULT) and each rerun must converge: no duplicate registry versions, copies or pull
requests, and production serving the promoted digest. Real training, registries and MLServer
endpoints on 127.0.0.1; reruns reuse the finished training through the flow's progress record."""

import json
import shutil

import pytest

import lifecycle_support as support
from mlrail import cli, config, gitops, promotion, serving
from mlrail.artifacts import ArtifactStore
from mlrail.registry import Registry
from mlrail.release import read_release, resolve_uri

# fixtures (pytest finds them by name in this module) and helpers
blank_registry_db = support.blank_registry_db
lifecycle = support.lifecycle
crash_after_each = support.crash_after_each
served_digest = support.served_digest
versions = support.versions
PRODUCTION_RELEASE = support.PRODUCTION_RELEASE
STAGING_RELEASE = support.STAGING_RELEASE


@pytest.mark.slow
def test_transit_promotes_copies_serves_and_rolls_back(lifecycle, monkeypatch, capsys):
    cfg = lifecycle("transit")
    pulls = gitops.pull_requests(cfg)

    # staging: crash after every step, then converge
    report = crash_after_each(monkeypatch, "staging", promotion.STAGING_FLOW_STEPS, lambda: promotion.run_staging(cfg))
    (candidate,) = versions(cfg, "staging")
    assert report.model["digest"] == candidate.digest and "challenger" in candidate.aliases
    assert candidate.tags["gates"] == "passed" and candidate.tags["git_commit"] == gitops.head_commit(cfg.root)
    assert ArtifactStore(cfg.env("staging")).digests() == [candidate.digest]
    assert served_digest(cfg, "staging") == candidate.digest
    staged = read_release(cfg.root / "deploy/overlays/staging")
    assert staged.model.digest == candidate.digest and staged.gates == "passed"
    assert staged.image == f"{cfg.image}@{candidate.tags['source_digest']}"  # locally the source digest stands in
    assert staged.pipeline == candidate.tags["pipeline_version"] and staged.data_snapshot.startswith("sha256:")
    assert staged.model.storage_uri.startswith("mlops://staging/")  # never a path of this machine
    (pr,) = pulls.list()
    assert (pr.number, pr.state, pr.files) == (1, "open", [PRODUCTION_RELEASE, STAGING_RELEASE])
    promoted = promotion.release_from_text(gitops.show(cfg.root, pr.head, PRODUCTION_RELEASE), "promotion PR")
    assert promoted.model.source == f"staging:{cfg.model_name}/{candidate.version}"
    assert promoted.model.storage_uri.startswith("mlops://production/") and promoted.image == staged.image
    assert (promoted.parameters, promoted.metrics, promoted.gates) == (staged.parameters, staged.metrics, "passed")
    assert "| gate | threshold | value | result |" in pr.body

    # correctness does not depend on the progress record: retraining finds the same version and PR
    shutil.rmtree(cfg.env("staging").local_dir / "flows")
    again = promotion.run_staging(cfg)
    assert [s.status for s in again.steps if s.step == "training"] == ["done"]
    assert [v.version for v in versions(cfg, "staging")] == [candidate.version]
    assert [(p.number, p.head) for p in pulls.list()] == [(1, pr.head)]

    # merge, then production: crash after every step, then converge
    assert cli.main(["merge", "--pr", "1"]) == 0
    crash_after_each(monkeypatch, "production", promotion.PRODUCTION_SERVE_STEPS, lambda: promotion.run_production(cfg))
    (champion,) = versions(cfg, "production")
    assert champion.digest == candidate.digest and "champion" in champion.aliases
    assert champion.tags["source_env"] == "staging" and champion.tags["source_version"] == candidate.version
    assert champion.tags["git_commit"] == candidate.tags["git_commit"]
    assert ArtifactStore(cfg.env("production")).digests() == [candidate.digest]
    assert served_digest(cfg, "production") == candidate.digest
    status = serving.endpoint(cfg, "production").status()
    served = read_release(cfg.root / "deploy/overlays/production").model
    model_dir = ArtifactStore(cfg.env("production")).local_path(resolve_uri(served.storage_uri, cfg.local_root))
    assert serving.infer(status.url, cfg.model_name, serving.input_example(model_dir)).outputs

    # a second candidate, promoted; then a rollback to the first
    second = promotion.run_staging(cfg, {"c": 0.5})
    assert second.model["digest"] != candidate.digest and second.pull_request["number"] == 2
    pulls.merge(2)
    promotion.run_production(cfg)
    assert served_digest(cfg, "production") == second.model["digest"]
    pr, target = promotion.open_rollback(cfg)
    assert target.model.digest == candidate.digest and pr.files == [PRODUCTION_RELEASE]
    assert promotion.open_rollback(cfg)[0].number == pr.number  # rerun: the same PR
    pulls.merge(pr.number)
    promotion.run_production(cfg)
    assert served_digest(cfg, "production") == candidate.digest
    assert len(versions(cfg, "production")) == 2
    assert Registry(cfg.env("production"), cfg.model_name).alias("champion").digest == candidate.digest

    # rerunning staging does not undo the rollback
    rerun = promotion.run_staging(cfg, {"c": 0.5})
    assert rerun.pull_request is None and len(pulls.list()) == 3

    capsys.readouterr()
    assert cli.main(["status", "--json"]) == 0
    production = json.loads(capsys.readouterr().out)["environments"][2]
    assert production["versions"] == 2 and candidate.digest[:19] in production["endpoint"]

    # a failed gate stops the flow before the PR (the CLI prints the gate table, then one error)
    path = cfg.root / "config" / "environments.yaml"
    path.write_text(path.read_text().replace("min_accuracy: 0.90", "min_accuracy: 0.999", 1))
    assert config.load(cfg.root).env("staging").gates["min_accuracy"] == 0.999
    assert cli.main(["staging", "--param", "c=0.5"]) == 3  # exit 3: a gate failed
    out, err = capsys.readouterr()
    assert "| min_accuracy | >= 0.999 |" in out and "| FAIL |" in out
    assert "error: staging gates failed for churn-classifier v2: min_accuracy" in err
    assert Registry(cfg.env("staging"), cfg.model_name).get("2").tags["gates"] == "failed"
    assert len(pulls.list()) == 3
