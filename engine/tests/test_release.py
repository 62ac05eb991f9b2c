"""The release file: parsing, validation, round trips, relative storage URIs; and the source digest."""

import subprocess
from dataclasses import replace

import pytest

from mlrail import kustomize, source
from mlrail.release import (
    ModelRef,
    Release,
    ReleaseError,
    parse_source,
    portable_uri,
    read_release,
    release_from_text,
    render_release,
    resolve_uri,
    source_of,
    write_release,
)

DIGEST = "sha256:" + "ab" * 32
IMAGE = "ghcr.io/my-org/churn-classifier@sha256:" + "cd" * 32


def release(version="3", **changes):
    model = ModelRef(
        name="churn-classifier",
        version=version,
        digest=DIGEST,
        storage_uri="mlops://staging/artifacts/models/sha256-" + "ab" * 32,
        source="staging:churn-classifier/3",
    )
    values = dict(
        model=model,
        commit="a" * 40,
        image=IMAGE,
        source_digest="sha256:" + "01" * 32,
        pipeline="sha256:" + "02" * 32,
        parameters={"features": {}, "training": {"c": 0.5, "max_iter": 1000, "seed": 42}},
        data_snapshot="sha256:" + "03" * 32,
        metrics={"accuracy": 0.95, "roc_auc": 0.98},
        gates="passed",
    )
    values.update(changes)
    return Release(**values)


def test_generated_overlays_declare_an_unreleased_environment(project_copy):
    for env in ("sandbox", "staging", "production"):
        found = read_release(project_copy / "deploy" / "overlays" / env)
        assert found.model.is_empty and found.model.name == "churn-classifier"
        assert found.image.endswith(":unreleased") and found.image_digest is None and not found.has_pipeline


def test_write_keeps_header_roundtrips_and_is_idempotent(project_copy):
    overlay = project_copy / "deploy" / "overlays" / "production"
    header = (overlay / "release.yaml").read_text().split("apiVersion")[0]
    assert "review it like code" in header
    assert write_release(overlay, release()) is True
    text = (overlay / "release.yaml").read_text()
    assert text.startswith(header) and 'modelVersion: "3"' in text  # quoted: stays a string for kustomize
    assert 'parameters: "{\\"features\\":{},\\"training\\":{\\"c\\":0.5' in text  # JSON in one string
    assert read_release(overlay) == release()
    assert write_release(overlay, release()) is False  # byte-identical: nothing written
    empty = replace(release(), model=ModelRef.empty("churn-classifier"))
    assert write_release(overlay, empty) is True and read_release(overlay).model.is_empty
    assert not list(overlay.glob(".*.partial"))


def test_kustomize_copies_the_image_and_model_into_the_workloads(project_copy):
    overlay = project_copy / "deploy" / "overlays" / "staging"
    uri = "s3://churn-staging-models/models/sha256-" + "ab" * 32
    write_release(overlay, release(model=replace(release().model, storage_uri=uri)))
    docs = {doc["kind"]: doc for doc in kustomize.render_documents(overlay)}
    assert docs["ConfigMap"]["metadata"]["name"] == "release"  # kept in the cluster, for traceability
    pod = docs["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert [c["image"] for c in pod["containers"]] == [IMAGE]
    assert docs["CronJob"]["metadata"]["annotations"]["mlops/release-commit"] == "a" * 40
    isvc = docs["InferenceService"]
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == uri
    annotations = isvc["metadata"]["annotations"]
    assert (annotations["mlops/model-version"], annotations["mlops/model-digest"]) == ("3", DIGEST)
    kustomization = (overlay / "kustomization.yaml").read_text()
    assert "newTag" not in kustomization and "images:" not in kustomization


def test_values_that_yaml_would_misread_are_quoted(project_copy):
    overlay = project_copy / "deploy" / "overlays" / "staging"
    odd = release(commit="yes: #1 [x]")
    write_release(overlay, odd)
    assert read_release(overlay) == odd


def test_hand_written_unquoted_version_is_read_as_text(project_copy):
    overlay = project_copy / "deploy" / "overlays" / "staging"
    write_release(overlay, release())
    path = overlay / "release.yaml"
    path.write_text(path.read_text().replace('modelVersion: "3"', "modelVersion: 3"))
    assert read_release(overlay).model.version == "3"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("kind: ConfigMap", "kind: Secret"), "ConfigMap named 'release'"),
        (lambda t: t.replace("  modelDigest: none\n", ""), "data.modelDigest is missing"),
        (lambda t: t.replace("  gates: none\n", "  gates: none\n  gate: passed\n"), "data.gate is not a release field"),
        (lambda t: t.replace("modelVersion: none", "modelVersion: latest"), "expected a registry version number"),
        (lambda t: t.replace("modelVersion: none", "modelVersion: 2"), "expected sha256"),
        (lambda t: t.replace("gates: none", "gates: yes-ish"), "data.gates is 'yes-ish'"),
        (lambda t: t.replace('parameters: "{}"', "parameters: c=1"), "data.parameters is 'c=1'; expected a JSON"),
        (lambda t: t.replace(":unreleased", ":0.1.0"), r"data.image is .*expected <image>@sha256"),
        (lambda t: t + "  : [\n", r"not valid YAML \(line \d+\)"),
    ],
)
def test_malformed_release_is_one_clear_error(project_copy, edit, message):
    overlay = project_copy / "deploy" / "overlays" / "staging"
    path = overlay / "release.yaml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(ReleaseError, match=message):
        read_release(overlay)


def test_missing_file_and_invalid_release_are_refused(project_copy):
    overlay = project_copy / "deploy" / "overlays" / "staging"
    (overlay / "release.yaml").unlink()
    with pytest.raises(ReleaseError, match="is missing"):
        read_release(overlay)
    with pytest.raises(ReleaseError, match="data.modelDigest"):
        write_release(overlay, release(model=replace(release().model, digest="md5:1")))
    assert not (overlay / "release.yaml").exists()  # nothing half-written


def test_a_machine_path_is_never_committed(tmp_path):
    local_root = tmp_path / ".mlops"
    stored = local_root / "production" / "artifacts" / "models" / ("sha256-" + "ab" * 32)
    portable = portable_uri(stored.as_uri(), local_root)
    assert portable == "mlops://production/artifacts/models/sha256-" + "ab" * 32
    assert resolve_uri(portable, local_root) == stored.resolve().as_uri()
    assert portable_uri("s3://bucket/models/x", local_root) == "s3://bucket/models/x"  # the same everywhere
    with pytest.raises(ReleaseError, match="outside the local root"):
        portable_uri((tmp_path / "elsewhere").as_uri(), local_root)
    with pytest.raises(ReleaseError, match="a path of one machine"):
        release(model=replace(release().model, storage_uri=stored.as_uri())).check("release.yaml")
    with pytest.raises(ReleaseError, match="under the local root"):
        resolve_uri("mlops://../etc", local_root)


def test_release_from_committed_text_and_sources():
    assert release_from_text(render_release(release()), "x") == release()
    with pytest.raises(ReleaseError, match="x: data.modelSource is 'staging:m'"):
        release(model=replace(release().model, source="staging:m")).check("x")
    assert parse_source(source_of("staging", "churn-classifier", "3")) == ("staging", "churn-classifier", "3")
    for bad in ("none", "staging:churn-classifier", "staging:churn-classifier/x", ":m/1"):
        with pytest.raises(ReleaseError, match="expected the form <env>:<model name>/<version>"):
            parse_source(bad)


def git(root, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True, capture_output=True
    )


def test_source_digest_reads_git_objects_of_the_package_source(tmp_path):
    root = tmp_path / "repo" / "project"  # a project in a folder of a bigger repository
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "features.py").write_text("COLUMNS = 3\n")
    (root / "pyproject.toml").write_text("[project]\nname = 'pkg'\n")
    (root / "Dockerfile").write_text("FROM python:3.11\n")
    (root / "README.md").write_text("docs\n")
    git(tmp_path / "repo", "init", "-q")
    git(tmp_path / "repo", "add", "-A")
    git(tmp_path / "repo", "commit", "-qm", "one")
    first = source.source_digest(root)
    assert first.startswith("sha256:") and len(first) == 71

    (root / "src" / "pkg" / "features.py").write_text("COLUMNS = 4\n")  # uncommitted: not part of it
    (root / "README.md").write_text("more docs\n")
    assert source.source_digest(root) == first
    git(tmp_path / "repo", "commit", "-qam", "docs and a feature")
    second = source.source_digest(root)
    assert second != first and source.source_digest(root, "HEAD~1") == first

    (root / "README.md").write_text("even more docs\n")
    git(tmp_path / "repo", "commit", "-qam", "docs only")
    assert source.source_digest(root) == second  # only what goes into the image counts
    (root / "Dockerfile").write_text("FROM python:3.12\n")
    git(tmp_path / "repo", "commit", "-qam", "new base image")
    assert source.source_digest(root) != second

    image = source.project_image("ghcr.io/o/p", root)
    assert image == "ghcr.io/o/p@" + source.source_digest(root)
    assert source.project_image("ghcr.io/o/p", root, image_digest=DIGEST) == "ghcr.io/o/p@" + DIGEST
    with pytest.raises(source.SourceError, match="without tag"):
        source.image_ref("ghcr.io/o/p:1.0", DIGEST)
    with pytest.raises(source.SourceError, match="'no-such-commit' is not a commit"):
        source.source_digest(root, "no-such-commit")
