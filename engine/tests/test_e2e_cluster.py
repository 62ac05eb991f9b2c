"""End to end on the cluster simulation: the path a team takes on GitHub, in cluster mode.

Each workflow job is run as a runner runs it (sim/cluster.py): a fresh checkout of the commit
the event carries, the job's identity (its own S3 key, GCS endpoint, MLflow, KFP and Argo CD
tokens), and the make targets of the job's steps, in order. Steps act cannot run (the image
build, OIDC, the App token) are provided by the harness: a digest stand-in for the pushed
image, per-environment credentials, the App installation token.

transit runs on gs:// stores, retrain on s3://. Both go: a developer PR (checks, sticky diff
comment) -> merge -> staging (KFP run, register, release on env/staging, Argo CD sync from that
commit, smoke of the synced InferenceService, gates, promotion PR) -> promotion merge ->
production (copy + verify / retrain + deployment PR + merge) -> sync from the merge commit ->
smoke -> a second promotion -> a rollback. Assertions read the simulated systems themselves.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
import requests
import yaml

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("kubectl") is None, reason="Argo CD's emulator renders overlays with kubectl"),
    pytest.mark.skipif(shutil.which("make") is None, reason="jobs run the Makefile's targets"),
]

MODEL = "churn-classifier"
RELEASE = "deploy/overlays/{env}/release.yaml"
PR_STEPS = (
    "check-config",
    "compile",
    "render",
    "validate",
    "diff BASE={base}",
    "pr-comment PR={pr} FILE=build/diff.md",
)


def generate(out: Path, promotion: str) -> Path:
    from cookiecutter.main import cookiecutter

    template = Path(__file__).resolve().parents[2]
    return Path(cookiecutter(str(template), no_input=True, output_dir=str(out), extra_context={"promotion": promotion}))


def release(sim, ref: str, env: str) -> dict:
    text = sim.show(ref, RELEASE.format(env=env))
    assert text is not None, f"{ref} has no {env} release"
    return yaml.safe_load(text)["data"]


def staging_job(sim, sha: str):
    return sim.job("staging", sha, f"staging IMAGE_DIGEST={sim.image_digest}").check()


def production_job(sim, sha: str):
    """production workflow: the flow, sync from the merge commit, smoke the synced URL when served."""
    result = sim.job("production", sha, "production", "sync ENV=production", "?served smoke ENV=production URL={url}")
    result.check()
    if result.outputs.get("served") == "true":
        assert "smoke test passed for production" in result.output, result.output[-3000:]
    return result


def predict(url: str) -> dict:
    """A client's v2 inference request against an endpoint, with the model's own example rows."""
    metadata = requests.get(f"{url}/v2/models/{MODEL}", timeout=10).json()
    inputs = []
    for tensor in metadata["inputs"]:
        value = 1.0 if tensor["datatype"].startswith("FP") else 1
        inputs.append({"name": tensor["name"], "shape": [1, 1], "datatype": tensor["datatype"], "data": [value]})
    answer = requests.post(f"{url}/v2/models/{MODEL}/infer", json={"inputs": inputs}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def open_dev_pr(sim, title: str, change) -> int:
    """A developer's change to config/environments.yaml (a training parameter), as a PR."""
    text = sim.show("main", "config/environments.yaml")
    return sim.open_pull_request(f"dev/{int(time.time() * 1000)}", {"config/environments.yaml": change(text)}, title)


def pr_checks(sim, number: int):
    pr = next(p for p in sim.pulls() if p["number"] == number)
    steps = [step.format(base=pr["base"]["sha"], pr=number) for step in PR_STEPS]
    return sim.job("pull-request", pr["head"]["sha"], *steps).check()


def release_check(sim, number: int, passes: bool = True):
    """The PR workflow's release job: `make verify-release` against the PR's base, as the read-only
    release-check identity (MLflow reads of staging and production, nothing else)."""
    pr = next(p for p in sim.pulls() if p["number"] == number)
    result = sim.job("release-check", pr["head"]["sha"], f"verify-release BASE={pr['base']['sha']}")
    if passes:
        result.check()
        assert "release.yaml: verified" in result.output, result.output[-3000:]
    else:
        assert result.returncode != 0 and "Error 4" in result.output, result.output[-3000:]
    return result


def forged_release_pr(sim, title: str, **fields: str) -> int:
    """Someone edits production's release.yaml by hand in a PR (fields replaced in its data)."""
    path = RELEASE.format(env="production")
    text = sim.show("main", path)
    for key, value in fields.items():
        text, count = re.subn(rf"^(  {key}): .*$", rf"\1: {value}", text, flags=re.MULTILINE)
        assert count == 1, key
    return sim.open_pull_request(f"dev/forged-{int(time.time() * 1000)}", {path: text}, title)


def serves(sim, env: str, data: dict) -> bool:
    """KServe serves the release's model: its content-addressed storage URI (the digest is in it),
    downloaded by the storage initializer; the files MLServer loaded hash to the release's digest."""
    from mlrail.artifacts import directory_digest

    served = sim.served(env)
    if served is None or served.storage_uri != data["storageUri"] or data["modelDigest"][7:] not in served.storage_uri:
        return False
    loaded = served.model_dir
    marker = loaded / ".complete"  # the store's completion marker comes down with the model, as it would
    if marker.exists():
        marker.unlink()
    return directory_digest(loaded) == data["modelDigest"]


def assert_separated(sim):
    """Staging's identity never touched production's registry or bucket; nothing was refused."""
    # the only refusals: the release check run without the release-check token (a fork's PR)
    denied = sim.log.denied()
    assert all(a.identity == "pull-request" and a.service == "mlflow" for a in denied), [vars(a) for a in denied][:5]
    assert sim.log.touched("staging") <= {"staging"}, sim.log.touched("staging")
    assert "production" not in sim.log.touched("staging", "mlflow")
    assert all(not a.allowed for a in sim.log.entries if a.identity == "pull-request")  # PR checks: no cloud access
    # the PR's release check read registries, and only read them
    checks = [a for a in sim.log.entries if a.identity == "release-check"]
    assert checks and {a.service for a in checks} == {"mlflow"} and {a.method for a in checks} == {"GET"}
    staging_argocd = sim.argocd_tokens["staging"]
    paths = {path for _, path, token in sim.argocd.requests if token == staging_argocd}
    assert paths and all(f"{MODEL}-staging" in path for path in paths), paths


def _simulation(tmp_path, monkeypatch, promotion: str, store: str):
    from sim.cluster import ClusterSimulation

    source = generate(tmp_path / "generated", promotion)
    monkeypatch.setenv("PYTHONPATH", str(source / "src"))  # the KFP emulator's component subprocesses
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    return ClusterSimulation(tmp_path / "sim", source, store=store)


def _first_staging(sim) -> tuple[str, dict, int]:
    """A developer PR (checks + sticky comment), its merge, staging; returns (main sha, staging release, PR)."""
    number = open_dev_pr(sim, "Train a little longer", lambda t: t.replace("max_iter: 1000", "max_iter: 1200"))
    pr_checks(sim, number)
    comments = [c for c in sim.github.comments.values() if c["_issue"] == number]
    assert len(comments) == 1 and "mlops-overlay-diff" in comments[0]["body"], comments
    pr_checks(sim, number)  # a second push's checks update the one sticky comment
    assert len([c for c in sim.github.comments.values() if c["_issue"] == number]) == 1
    merged = sim.merge(number, "squash")

    staging = staging_job(sim, merged)
    # Staging's release is on env/staging: main's commit + release.yaml; the test endpoint was synced to it.
    branch_sha = sim.github.sha("refs/heads/env/staging")
    assert branch_sha and sim.github.sha(f"{branch_sha}^") == merged
    recorded = release(sim, "env/staging", "staging")
    assert recorded["image"] == f"ghcr.io/my-org/{MODEL}@{sim.image_digest}", recorded["image"]
    assert recorded["gates"] == "passed" and recorded["modelVersion"] == "1"
    synced = [sha for app, sha in sim.argocd.syncs if app == f"{MODEL}-staging"]
    assert synced and sim.github.sha(f"{synced[0]}^") == merged, (synced, merged)
    assert serves(sim, "staging", recorded)
    assert "smoke" in staging.output and "p95 latency" in staging.output
    # One KFP upload per pipeline, named by the commit; runs in staging's namespace only.
    versions = [v for v in sim.kfp.versions.values() if v["display_name"] == merged[:12]]
    assert len(versions) == 2, [v["display_name"] for v in sim.kfp.versions.values()]
    namespaces = {e["namespace"] for e in sim.kfp.experiments.values()}
    assert namespaces == {sim.namespaces["staging"]}, namespaces
    versions_staging = sim.registry_versions("staging", MODEL)
    assert [v["version"] for v in versions_staging] == [1]
    # the smoke test of the synced InferenceService fed the latency gate (max_latency_ms) in staging
    assert float(versions_staging[0]["tags"]["smoke.p95_ms"]) > 0
    assert versions_staging[0]["tags"]["gates"] == "passed"
    assert versions_staging[0]["source"].startswith(f"{sim.store}://{sim.buckets['staging']}/models/sha256-")
    assert any(key.startswith("pipeline-root/") for key in sim.objects("staging"))
    promotion = [p for p in sim.pulls() if p["head"]["ref"].startswith("promote/")]
    assert len(promotion) == 1 and promotion[0]["state"] == "open"
    assert sim.pull_files(promotion[0]["number"]) == [RELEASE.format(env="production"), RELEASE.format(env="staging")]
    return merged, recorded, promotion[0]["number"]


def test_transit_on_gcs(tmp_path, monkeypatch, no_proxy):
    started = time.perf_counter()
    with _simulation(tmp_path, monkeypatch, "transit", "gs") as sim:
        merged, staged, promotion = _first_staging(sim)
        assert sim.objects("production") == []
        assert sim.registry_versions("production", MODEL) == []

        release_check(sim, promotion)
        # Without the release-check token (a fork's PR gets no secrets) the registries refuse: the check fails.
        pr = next(p for p in sim.pulls() if p["number"] == promotion)
        fork = sim.job("pull-request", pr["head"]["sha"], f"verify-release BASE={pr['base']['sha']}")
        assert fork.returncode != 0 and "Error 4" in fork.output, fork.output[-3000:]
        assert "cannot check data.modelVersion against the staging registry" in fork.output, fork.output[-3000:]
        merge1 = sim.merge(promotion)
        production_job(sim, merge1)
        prod = release(sim, "main", "production")
        assert prod["modelDigest"] == staged["modelDigest"]
        assert prod["storageUri"].startswith(f"gs://{sim.buckets['production']}/models/")
        versions = sim.registry_versions("production", MODEL)
        assert [v["version"] for v in versions] == [1] and "champion" in versions[0]["aliases"]
        assert versions[0]["tags"]["source_env"] == "staging"
        served = sim.served("production")
        assert serves(sim, "production", prod)
        assert any(s == merge1 for app, s in sim.argocd.syncs if app == f"{MODEL}-production")
        first = predict(served.url)
        assert first["model_name"] == MODEL and first["outputs"]
        # A hand-edited release naming a digest staging never registered fails the PR early.
        forged = release_check(sim, forged_release_pr(sim, "Swap the model", modelDigest="sha256:" + "0" * 64), False)
        assert "data.modelDigest is sha256:000" in forged.output and "but staging v1 holds" in forged.output

        # A second promotion: a new model (different parameters), promoted and served.
        number = open_dev_pr(sim, "Longer still", lambda t: t.replace("max_iter: 1200", "max_iter: 1500"))
        merged2 = sim.merge(number, "squash")
        staging_job(sim, merged2)
        open_promotions = [p for p in sim.pulls() if p["head"]["ref"].startswith("promote/") and p["state"] == "open"]
        assert len(open_promotions) == 1
        release_check(sim, open_promotions[0]["number"])
        merge2 = sim.merge(open_promotions[0]["number"])
        production_job(sim, merge2)
        second = release(sim, "main", "production")
        assert second["modelDigest"] != prod["modelDigest"]
        assert serves(sim, "production", second)
        assert [v["version"] for v in sim.registry_versions("production", MODEL)] == [1, 2]
        assert len([k for k in sim.objects("production") if k.endswith("/MLmodel")]) == 2

        # Rollback: the workflow_dispatch job opens the revert PR; merging it serves v1 again.
        sim.job("production", merge2, "rollback").check()
        rollback = [p for p in sim.pulls() if p["head"]["ref"].startswith("rollback/")]
        assert len(rollback) == 1 and sim.pull_files(rollback[0]["number"]) == [RELEASE.format(env="production")]
        release_check(sim, rollback[0]["number"])
        merge3 = sim.merge(rollback[0]["number"])
        production_job(sim, merge3)
        assert release(sim, "main", "production")["modelDigest"] == prod["modelDigest"]
        assert serves(sim, "production", prod)
        assert [v["version"] for v in sim.registry_versions("production", MODEL)] == [1, 2]
        predict(sim.served("production").url)
        assert_separated(sim)
        _report(sim, "transit gs://", started)


def test_retrain_on_s3(tmp_path, monkeypatch, no_proxy):
    started = time.perf_counter()
    with _simulation(tmp_path, monkeypatch, "retrain", "s3") as sim:
        merged, staged, promotion = _first_staging(sim)
        release_check(sim, promotion)
        merge1 = sim.merge(promotion)
        promoted = release(sim, "main", "production")
        assert promoted["modelVersion"] == "none" and promoted["pipeline"] == staged["pipeline"]
        assert promoted["image"] == staged["image"]  # the pushed digest, not a source digest

        # Production retrains with the promoted image digest: the compiled hash matches staging's.
        result = production_job(sim, merge1)
        assert result.outputs.get("served") == "false"
        namespaces = {e["namespace"] for e in sim.kfp.experiments.values()}
        assert namespaces == {sim.namespaces["staging"], sim.namespaces["production"]}
        versions = sim.registry_versions("production", MODEL)
        assert [v["version"] for v in versions] == [1]
        assert versions[0]["tags"]["image"] == staged["image"]
        assert versions[0]["tags"]["pipeline_version"] == staged["pipeline"]
        assert versions[0]["source"].startswith(f"s3://{sim.buckets['production']}/models/")
        deploy = [p for p in sim.pulls() if p["head"]["ref"].startswith("deploy/")]
        assert len(deploy) == 1 and sim.pull_files(deploy[0]["number"]) == [RELEASE.format(env="production")]
        assert sim.served("production") is None  # nothing served before the deployment PR is merged
        release_check(sim, deploy[0]["number"])
        # retrain serves only what production trained: staging's model named by hand fails the PR early
        staging_model = {
            "modelVersion": '"1"',
            "modelSource": f"staging:{MODEL}/1",
            "modelDigest": staged["modelDigest"],
            "storageUri": staged["storageUri"],
            "gates": "passed",
        }
        forged = release_check(sim, forged_release_pr(sim, "Serve staging's model", **staging_model), False)
        assert "a retrain production serves only a model it trained itself" in forged.output

        merge2 = sim.merge(deploy[0]["number"])
        production_job(sim, merge2)
        prod = release(sim, "main", "production")
        served = sim.served("production")
        assert serves(sim, "production", prod) and prod["modelDigest"] == versions[0]["tags"]["digest"]
        assert any(s == merge2 for app, s in sim.argocd.syncs if app == f"{MODEL}-production")
        predict(served.url)

        # A second promotion, retrained and deployed.
        number = open_dev_pr(sim, "Longer still", lambda t: t.replace("max_iter: 1200", "max_iter: 1500"))
        merged2 = sim.merge(number, "squash")
        staging_job(sim, merged2)
        promotion2 = [p for p in sim.pulls() if p["head"]["ref"].startswith("promote/") and p["state"] == "open"]
        assert len(promotion2) == 1
        production_job(sim, sim.merge(promotion2[0]["number"]))
        deploy2 = [p for p in sim.pulls() if p["head"]["ref"].startswith("deploy/") and p["state"] == "open"]
        assert len(deploy2) == 1
        production_job(sim, sim.merge(deploy2[0]["number"]))
        second = release(sim, "main", "production")
        assert second["modelDigest"] != prod["modelDigest"]
        assert serves(sim, "production", second)
        assert [v["version"] for v in sim.registry_versions("production", MODEL)] == [1, 2]

        # Rollback to the first production model.
        sim.job("production", sim.main(), "rollback").check()
        rollback = [p for p in sim.pulls() if p["head"]["ref"].startswith("rollback/")]
        assert len(rollback) == 1
        release_check(sim, rollback[0]["number"])
        production_job(sim, sim.merge(rollback[0]["number"]))
        assert serves(sim, "production", prod)
        predict(sim.served("production").url)
        assert_separated(sim)
        _report(sim, "retrain s3://", started)


def _report(sim, name: str, started: float) -> None:
    jobs = [{"identity": j.identity, "steps": list(j.targets), "seconds": j.seconds} for j in sim.jobs]
    total = round(time.perf_counter() - started, 1)
    print(json.dumps({"scenario": name, "seconds": total, "start": sim.timings.get("start"), "jobs": jobs}, indent=1))
