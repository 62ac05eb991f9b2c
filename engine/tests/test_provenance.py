"""Provenance before serving (issue 11, finding 1): production serves a release only when it is
committed on main, its model came from staging (transit) or from production's own run of the
promoted pipeline (retrain), its gates passed and its registry version and digest agree. The
same verification runs in `merge` and in the pull-request check (`verify-release --base`), and a
rolled-back model comes back only through `promote --again`.

Real SQLite registries and stores under a temporary .mlops; no training and no endpoint: the
versions are registered directly with the lineage tags the flows write."""

import subprocess
import uuid
from dataclasses import replace

import pytest

import lifecycle_support as support
from mlrail import cli, gitops, promotion, provenance, serving
from mlrail.artifacts import ArtifactStore
from mlrail.provenance import ProvenanceError
from mlrail.registry import Registry
from mlrail.release import ModelRef, read_release, write_release

blank_registry_db = support.blank_registry_db
lifecycle = support.lifecycle
PRODUCTION_RELEASE = support.PRODUCTION_RELEASE
STAGING_RELEASE = support.STAGING_RELEASE
PIPELINE = "sha256:" + "1c" * 32
SNAPSHOT = "sha256:" + "5e" * 32
MLMODEL = """\
flavors:
  python_function:
    loader_module: mlflow.sklearn
    model_path: model.pkl
saved_input_example_info:
  artifact_path: input_example.json
  pandas_orient: split
  type: dataframe
signature:
  inputs: '[{"type": "double", "name": "tenure", "required": true}]'
  outputs: '[{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}]'
"""


def git(root, *args):
    argv = ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args]
    return subprocess.run(argv, cwd=root, check=True, capture_output=True, text=True).stdout.strip()


def register(cfg, env_name, tmp_path, gates="passed", **extra):
    """A stored MLflow model registered in `env_name` with a staging run's lineage tags."""
    folder = tmp_path / f"model-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    (folder / "model.pkl").write_bytes(uuid.uuid4().bytes)
    (folder / "input_example.json").write_text('{"columns": ["tenure"], "data": [[1.5]]}')
    (folder / "MLmodel").write_text(MLMODEL)
    stored = ArtifactStore(cfg.env(env_name)).put(folder)
    tags = {
        "git_commit": gitops.head_commit(cfg.root),
        "pipeline_version": PIPELINE,
        "data_snapshot": SNAPSHOT,
        "image": f"{cfg.image}@sha256:" + "ab" * 32,
        "source_digest": "sha256:" + "ab" * 32,
        "parameters": '{"features":{},"training":{"c":1.0}}',
        "metric.accuracy": "0.95",
        "metric.roc_auc": "0.97",
        "gates": gates,
        **extra,
    }
    return Registry(cfg.env(env_name), cfg.model_name).register(stored, tags)


def transit_release(cfg, mv, **model_changes):
    """Production's release as a transit promotion PR writes it for staging version `mv`."""
    in_production = ArtifactStore(cfg.env("production")).uri_for(mv.digest)
    release = promotion.release_of(cfg, "staging", mv, storage_uri=in_production)
    return replace(release, model=replace(release.model, **model_changes)) if model_changes else release


def commit_release(cfg, release, message="Promote"):
    write_release(cfg.root / "deploy/overlays/production", release)
    git(cfg.root, "commit", "--quiet", "-am", message)


def nothing_copied(cfg):
    production = cfg.env("production")
    return ArtifactStore(production).digests() == [] and Registry(production, cfg.model_name).versions() == []


@pytest.fixture()
def transit(lifecycle, tmp_path):
    cfg = lifecycle("transit")
    passed = register(cfg, "staging", tmp_path)
    failed = register(cfg, "staging", tmp_path, gates="failed", **{"metric.accuracy": "0.783"})
    return cfg, passed, failed


def test_a_validated_committed_release_is_verified(transit):
    cfg, passed, _ = transit
    commit_release(cfg, transit_release(cfg, passed))
    release = provenance.verify_committed(cfg)
    assert release.model.digest == passed.digest and release.model.source == f"staging:{cfg.model_name}/1"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("failed", r"data.modelSource names staging v2, whose gates failed"),
        ("sandbox", r"data.modelSource is 'sandbox:churn-classifier/1'; a transit production serves only a model "),
        ("v99", r"data.modelVersion names staging v99, which the staging registry does not have"),
        ("verdict", r"data.gates is 'failed'; production serves only a model whose gates passed"),
        ("digest", r"data.modelDigest is sha256:0000.* but staging v1 holds sha256:"),
    ],
)
def test_production_refuses_a_release_it_cannot_trace(transit, capsys, change, message):
    cfg, passed, failed = transit
    release = {
        "failed": lambda: replace(transit_release(cfg, failed), gates="passed"),  # the file claims it passed
        "sandbox": lambda: transit_release(cfg, passed, source=f"sandbox:{cfg.model_name}/1"),
        "v99": lambda: transit_release(cfg, passed, version="99", source=f"staging:{cfg.model_name}/99"),
        "verdict": lambda: replace(transit_release(cfg, passed), gates="failed"),
        "digest": lambda: transit_release(cfg, passed, digest="sha256:" + "00" * 32),
    }[change]()
    commit_release(cfg, release)
    capsys.readouterr()
    assert cli.main(["production"]) == 4
    (err,) = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("» ")]  # progress aside
    assert err.startswith(f"error: {PRODUCTION_RELEASE} at HEAD: ")
    assert __import__("re").search(message, err), err
    assert nothing_copied(cfg)  # nothing copied, registered or served


def test_an_uncommitted_edit_is_never_served(transit, capsys):
    cfg, passed, _ = transit
    commit_release(cfg, transit_release(cfg, passed))
    # an untested sandbox experiment, named by an edit nobody committed
    write_release(cfg.root / "deploy/overlays/production", transit_release(cfg, passed, source="sandbox:x/1"))
    assert cli.main(["production"]) == 4
    assert "has uncommitted changes; production serves only the release committed on main" in capsys.readouterr().err
    assert nothing_copied(cfg)


def test_version_none_while_a_model_is_served_is_refused_explicitly(transit, monkeypatch, capsys):
    cfg, *_ = transit
    status = serving.EndpointStatus("production", "http://127.0.0.1:9", cfg.model_name, "3", "sha256:" + "cd" * 32, 1)
    monkeypatch.setattr(serving.LocalEndpoint, "status", lambda self: status)
    assert cli.main(["production"]) == 4
    err = capsys.readouterr().err
    assert "data.modelVersion is none but the production endpoint http://127.0.0.1:9 still serves v3" in err
    assert "stop the endpoint on purpose (`mlrail stop --env production`)" in err
    monkeypatch.setattr(serving.LocalEndpoint, "status", lambda self: None)
    assert cli.main(["production"]) == 0  # nothing serves: nothing to do


def test_the_pull_request_check_verifies_the_releases_a_change_touches(transit, capsys):
    cfg, passed, failed = transit
    base = gitops.head_commit(cfg.root)
    git(cfg.root, "checkout", "--quiet", "-b", "promote/bad")
    commit_release(cfg, replace(transit_release(cfg, failed), gates="passed"))
    capsys.readouterr()
    assert cli.main(["verify-release", "--base", base]) == 4
    assert "whose gates failed" in capsys.readouterr().err
    git(cfg.root, "checkout", "--quiet", "main")
    git(cfg.root, "checkout", "--quiet", "-b", "promote/good")
    commit_release(cfg, transit_release(cfg, passed))
    assert cli.main(["verify-release", "--base", base]) == 0
    assert f"{PRODUCTION_RELEASE}: verified ({cfg.model_name} v1" in capsys.readouterr().out
    assert cli.main(["verify-release", "--base", "HEAD"]) == 0
    assert "no release.yaml changed" in capsys.readouterr().out


def test_the_pull_request_check_writes_its_verdict_for_the_job_summary(transit, capsys, tmp_path):
    """`--summary FILE`: what a reviewer reads in the PR job's summary, verified or refused."""
    cfg, passed, failed = transit
    base = gitops.head_commit(cfg.root)
    summary = tmp_path / "release-check.md"
    git(cfg.root, "checkout", "--quiet", "-b", "promote/bad")
    commit_release(cfg, replace(transit_release(cfg, failed), gates="passed"))
    assert cli.main(["verify-release", "--base", base, "--summary", str(summary)]) == 4
    text = summary.read_text()
    assert text.startswith("## Release check\n") and "**Refused**" in text and "whose gates failed" in text
    git(cfg.root, "checkout", "--quiet", "main")
    git(cfg.root, "checkout", "--quiet", "-b", "promote/good")
    commit_release(cfg, transit_release(cfg, passed))
    assert cli.main(["verify-release", "--base", base, "--summary", str(summary)]) == 0
    text = summary.read_text()
    assert "**Refused**" not in text
    row = f"| `{PRODUCTION_RELEASE}` | production | {cfg.model_name} v1 | `staging:{cfg.model_name}/1` | passed |"
    assert row in text
    assert cli.main(["verify-release", "--base", "HEAD", "--summary", str(summary)]) == 0
    assert "No `release.yaml` changed" in summary.read_text()


def test_merge_verifies_before_it_publishes(transit, capsys):
    cfg, passed, failed = transit
    pulls = gitops.pull_requests(cfg)
    text = promotion.render_committed_like(cfg, "production", replace(transit_release(cfg, failed), gates="passed"))
    pr = pulls.open_or_update("promote/failed", "main", "Promote failed", "", {PRODUCTION_RELEASE: text})
    remote_main = git(cfg.root, "--git-dir", str(pulls.remote), "rev-parse", "main")
    assert cli.main(["merge", "--pr", str(pr.number)]) == 4
    assert f"{PRODUCTION_RELEASE} in pull request #{pr.number}:" in capsys.readouterr().err
    assert git(cfg.root, "--git-dir", str(pulls.remote), "rev-parse", "main") == remote_main
    assert pulls.get(pr.number).state == "open" and read_release(cfg.root / "deploy/overlays/production").model.is_empty


def test_a_rolled_back_model_comes_back_only_through_promote_again(transit, tmp_path, capsys):
    cfg, first, _ = transit
    second = register(cfg, "staging", tmp_path)
    commit_release(cfg, transit_release(cfg, first))
    commit_release(cfg, transit_release(cfg, second))
    commit_release(cfg, transit_release(cfg, first), f"Roll back {cfg.model_name} in production to v1")
    assert provenance.rolled_back_digests(cfg, PRODUCTION_RELEASE) == {second.digest: gitops.head_commit(cfg.root)}
    assert provenance.verify_committed(cfg).model.digest == first.digest  # the rollback target itself is fine
    commit_release(cfg, transit_release(cfg, second))
    with pytest.raises(
        ProvenanceError,
        match=r"data.modelDigest sha256:\w+ was rolled back out of production .*"
        r"`mlrail promote --again`",
    ):
        provenance.verify_committed(cfg)
    Registry(cfg.env("staging"), cfg.model_name).set_tags(second.version, {provenance.TAG_AGAIN: "test"})
    assert provenance.verify_committed(cfg).model.digest == second.digest


def test_promote_again_is_the_one_recorded_override(transit, tmp_path):
    cfg, first, _ = transit
    staging = Registry(cfg.env("staging"), cfg.model_name)
    staging.set_alias("challenger", first.version)
    pulls = gitops.pull_requests(cfg)
    pr, _ = promotion.open_promotion(cfg)
    pulls.close(pr.number)  # decided: rejected by a reviewer
    assert promotion.open_promotion(cfg) == (None, promotion.open_promotion(cfg)[1])
    again, _ = promotion.open_promotion(cfg, again=True)
    assert again is not None and again.number != pr.number
    assert "promote --again after PR #1 (closed)" in staging.get(first.version).tags[provenance.TAG_AGAIN]
    assert "Proposed again on purpose" in again.body


@pytest.fixture()
def retrain(lifecycle, tmp_path):
    cfg = lifecycle("retrain")
    validated = register(cfg, "staging", tmp_path)
    return cfg, validated


def retrain_release(cfg, staging_mv, production_mv=None):
    staged = promotion.release_of(cfg, "staging", staging_mv)
    if production_mv is None:
        return replace(
            staged,
            model=ModelRef(cfg.model_name, source=staged.model.source),
            data_snapshot="none",
            metrics={},
            gates="none",
        )
    model = ModelRef(
        cfg.model_name,
        production_mv.version,
        production_mv.digest,
        promotion.portable_uri(production_mv.source, cfg.local_root),
        f"production:{cfg.model_name}/{production_mv.version}",
    )
    return staged.with_model(model, metrics=dict(production_mv.metrics), gates="passed")


def test_retrain_serves_only_what_production_trained_from_the_promoted_pipeline(retrain, tmp_path):
    cfg, validated = retrain
    commit_release(cfg, retrain_release(cfg, validated))
    assert provenance.verify_committed(cfg).model.is_empty  # the promoted pipeline traces to staging v1
    trained = register(cfg, "production", tmp_path, validated_by=f"staging:{cfg.model_name}/1")
    commit_release(cfg, retrain_release(cfg, validated, trained), "Deploy")
    assert provenance.verify_committed(cfg).model.digest == trained.digest
    stray = register(cfg, "production", tmp_path)  # registered in production, but not by its flow
    commit_release(cfg, retrain_release(cfg, validated, stray), "Deploy stray")
    with pytest.raises(ProvenanceError, match="which the production flow did not train from the promoted pipeline"):
        provenance.verify_committed(cfg)
    copied = replace(retrain_release(cfg, validated, trained), model=transit_release(cfg, validated).model)
    commit_release(cfg, copied, "Deploy a staging model")
    with pytest.raises(ProvenanceError, match="a retrain production serves only a model it trained itself"):
        provenance.verify_committed(cfg)


def test_retrain_refuses_to_train_a_pipeline_staging_did_not_pass(retrain, tmp_path, capsys):
    cfg, _ = retrain
    failed = register(cfg, "staging", tmp_path, gates="failed")
    commit_release(cfg, retrain_release(cfg, failed))
    assert cli.main(["production"]) == 4
    assert "data.modelSource names staging v2, whose gates failed" in capsys.readouterr().err
    assert Registry(cfg.env("production"), cfg.model_name).versions() == []  # nothing trained


def test_a_release_text_that_is_not_yaml_names_the_line(transit):
    cfg, *_ = transit
    with pytest.raises(ProvenanceError, match=r"^x.yaml is not valid YAML \(line 3\): mapping values"):
        provenance.verify_text(cfg, "production", "apiVersion: v1\nkind: ConfigMap\n  bad: indent\n", "x.yaml")
