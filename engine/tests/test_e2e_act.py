"""End to end on the cluster simulation through the generated workflows themselves, run by act
(engine/src/mlrail/workflows.py) with `MLOPS_BACKEND=cluster`: the same path as
test_e2e_cluster.py's job-by-job runs, from the workflow files. A module of its own so that
xdist runs it beside the other end-to-end module.
"""

from __future__ import annotations

import time

import pytest

from test_e2e_cluster import (
    MODEL,
    _report,
    _simulation,
    assert_separated,
    open_dev_pr,
    predict,
    release,
    serves,
)
from test_e2e_cluster import pytestmark as pytestmark  # slow, and the same tools needed

# --- through act: the generated workflows themselves -------------------------------------------------


def _act(sim, identity, sha, workflow, event, **kwargs):
    from sim.cluster import act_run

    result, run = act_run(sim, identity, sha, workflow, event, **kwargs)
    failed = [j for j in run.jobs if j.result == "failed"]
    assert run.returncode == 0 and not failed, f"{workflow} ({event}) under act failed:\n{result.output[-8000:]}"
    return result, run


def _pr_payload(sim, number: int) -> dict:
    from sim.cluster import REPOSITORY

    pr = next(p for p in sim.pulls() if p["number"] == number)
    repo = {"full_name": REPOSITORY}
    return {
        "action": "synchronize",
        "number": number,
        "pull_request": {
            "number": number,
            "head": {"ref": pr["head"]["ref"], "sha": pr["head"]["sha"], "repo": repo},
            "base": {"ref": "main", "sha": pr["base"]["sha"], "repo": repo},
        },
    }


def _release_job(sim, number: int) -> None:
    """The PR workflow's release job on a promotion, deployment or rollback PR, as release-check."""
    pr = next(p for p in sim.pulls() if p["number"] == number)
    result, _ = _act(sim, "release-check", pr["head"]["sha"], "pull-request.yml", "pull_request",
                     payload=_pr_payload(sim, number), job="release")  # fmt: skip
    assert "deploy/overlays/production/release.yaml: verified" in result.output, result.output[-4000:]


@pytest.mark.parametrize(("promotion", "store"), [("transit", "gs"), ("retrain", "s3")])
def test_workflows_through_act(tmp_path, monkeypatch, no_proxy, promotion, store):
    started = time.perf_counter()
    production_workflow = f"production-{promotion}.yml"
    with _simulation(tmp_path, monkeypatch, promotion, store) as sim:
        # PR: the overlay diff job posts the sticky comment on the emulated GitHub.
        number = open_dev_pr(sim, "Train a little longer", lambda t: t.replace("max_iter: 1000", "max_iter: 1200"))
        pr = next(p for p in sim.pulls() if p["number"] == number)
        _act(sim, "pull-request", pr["head"]["sha"], "pull-request.yml", "pull_request",
             payload=_pr_payload(sim, number), job="diff")  # fmt: skip
        comments = [c for c in sim.github.comments.values() if c["_issue"] == number]
        assert len(comments) == 1 and "mlops-overlay-diff" in comments[0]["body"]
        merged = sim.merge(number, "squash")

        # Merge to main: the staging workflow (image digest stand-in, train, release on env/staging, sync, smoke, PR).
        _act(sim, "staging", merged, "staging.yml", "push")
        staged = release(sim, "env/staging", "staging")
        assert staged["image"].endswith(f"@{sim.image_digest}") and staged["gates"] == "passed"
        assert serves(sim, "staging", staged)
        promotion_pr = [p for p in sim.pulls() if p["head"]["ref"].startswith("promote/")]
        assert len(promotion_pr) == 1
        _release_job(sim, promotion_pr[0]["number"])
        merge1 = sim.merge(promotion_pr[0]["number"])

        # The promotion merge: the production workflow.
        _act(sim, "production", merge1, production_workflow, "push")
        if promotion == "retrain":
            assert sim.served("production") is None
            deploy = [p for p in sim.pulls() if p["head"]["ref"].startswith("deploy/")]
            assert len(deploy) == 1
            _release_job(sim, deploy[0]["number"])
            merge1 = sim.merge(deploy[0]["number"])
            _act(sim, "production", merge1, production_workflow, "push")
        prod = release(sim, "main", "production")
        assert serves(sim, "production", prod)
        assert any(s == merge1 for app, s in sim.argocd.syncs if app == f"{MODEL}-production")
        predict(sim.served("production").url)
        assert [v["version"] for v in sim.registry_versions("production", MODEL)] == [1]

        # Rollback needs an earlier production model: a second promotion, then the manual rollback run.
        number = open_dev_pr(sim, "Longer still", lambda t: t.replace("max_iter: 1200", "max_iter: 1500"))
        _act(sim, "staging", sim.merge(number, "squash"), "staging.yml", "push")
        second_pr = [p for p in sim.pulls() if p["head"]["ref"].startswith("promote/") and p["state"] == "open"]
        merge2 = sim.merge(second_pr[0]["number"])
        _act(sim, "production", merge2, production_workflow, "push")
        if promotion == "retrain":
            deploy = [p for p in sim.pulls() if p["head"]["ref"].startswith("deploy/") and p["state"] == "open"]
            _act(sim, "production", sim.merge(deploy[0]["number"]), production_workflow, "push")
        second = release(sim, "main", "production")
        assert second["modelDigest"] != prod["modelDigest"] and serves(sim, "production", second)

        _act(sim, "production", sim.main(), production_workflow, "workflow_dispatch",
             payload={"ref": "refs/heads/main"}, inputs={"action": "rollback"})  # fmt: skip
        rollback = [p for p in sim.pulls() if p["head"]["ref"].startswith("rollback/")]
        assert len(rollback) == 1
        _release_job(sim, rollback[0]["number"])
        _act(sim, "production", sim.merge(rollback[0]["number"]), production_workflow, "push")
        assert serves(sim, "production", prod)
        predict(sim.served("production").url)
        assert [v["version"] for v in sim.registry_versions("production", MODEL)] == [1, 2]
        assert_separated(sim)
        _report(sim, f"act {promotion} {store}://", started)
