import dataclasses
import os
import shutil
import stat

import pytest

from mlrail import config
from mlrail.artifacts import TEMP_PREFIX, ArtifactError, ArtifactStore, directory_digest


@pytest.fixture()
def model_dir(tmp_path):
    folder = tmp_path / "trained" / "model"
    (folder / "extra").mkdir(parents=True)
    (folder / "model.joblib").write_bytes(b"weights-" * 1000)
    (folder / "extra" / "meta.json").write_text('{"framework": "sklearn"}')
    return folder


@pytest.fixture()
def stores(project_copy):
    cfg = config.load()
    return ArtifactStore(cfg.env("staging")), ArtifactStore(cfg.env("production"))


def test_digest_is_stable_across_copies_and_sensitive_to_content(model_dir, tmp_path):
    digest = directory_digest(model_dir)
    copy = shutil.copytree(model_dir, tmp_path / "elsewhere" / "renamed")
    os.utime(copy / "model.joblib", (0, 0))  # timestamps do not matter
    assert directory_digest(copy) == digest and digest.startswith("sha256:") and len(digest) == 71
    (copy / "extra" / "meta.json").write_text('{"framework": "xgboost"}')
    assert directory_digest(copy) != digest
    (copy / "extra" / "meta.json").rename(copy / "meta.json")  # the path is part of the content
    assert directory_digest(copy) not in (digest, directory_digest(model_dir))


def test_put_is_content_addressed_and_idempotent(stores, model_dir):
    staging, _ = stores
    first = staging.put(model_dir)
    assert first.digest == directory_digest(model_dir)
    assert first.uri.startswith("file:///") and first.uri.endswith("/models/sha256-" + first.digest[7:])
    stored = staging.local_path(first.uri)
    mtime = stored.joinpath("model.joblib").stat().st_mtime_ns
    assert staging.put(model_dir) == first  # same content, same URI, no rewrite
    assert stored.joinpath("model.joblib").stat().st_mtime_ns == mtime
    assert not stored.joinpath("model.joblib").stat().st_mode & stat.S_IWUSR  # immutable once stored
    assert staging.has(first.digest) and staging.digests() == [first.digest]
    staging.verify(first.uri, first.digest)


def test_copy_between_environment_stores_verifies_both_ends(stores, model_dir):
    staging, production = stores
    stored = staging.put(model_dir)
    copied = production.copy_from(staging, stored.uri, stored.digest)
    assert copied.digest == stored.digest and copied.uri != stored.uri
    assert copied.uri.startswith(production.root_uri) and copied.uri == production.uri_for(stored.digest)
    production.verify(copied.uri, copied.digest)
    assert production.copy_from(staging, stored.uri, stored.digest) == copied  # idempotent


def test_tampering_is_detected_with_env_uri_and_both_digests(stores, model_dir):
    staging, production = stores
    stored = staging.put(model_dir)
    weights = staging.local_path(stored.uri) / "model.joblib"
    weights.chmod(0o644)
    weights.write_bytes(b"poisoned")
    with pytest.raises(ArtifactError) as caught:
        staging.verify(stored.uri, stored.digest)
    message = str(caught.value)
    assert "staging" in message and stored.uri in message and stored.digest in message
    assert directory_digest(weights.parent) in message
    with pytest.raises(ArtifactError, match="was expected"):  # a tampered source is never copied
        production.copy_from(staging, stored.uri, stored.digest)
    assert not production.has(stored.digest)


def test_missing_foreign_and_mismatched_uris_are_refused(stores, model_dir):
    staging, production = stores
    stored = staging.put(model_dir)
    with pytest.raises(ArtifactError, match="is not in the production store"):
        production.verify(stored.uri, stored.digest)  # environments never read each other's store
    with pytest.raises(ArtifactError, match="missing from the store"):
        production.verify(production.uri_for(stored.digest), stored.digest)
    other = "sha256:" + "0" * 64
    with pytest.raises(ArtifactError, match="does not match digest"):
        staging.verify(stored.uri, other)
    with pytest.raises(ArtifactError, match="sha256:<64 hex digits>"):
        staging.verify(stored.uri, "sha256:xyz")


def test_crash_mid_copy_leaves_no_visible_model_and_rerun_converges(stores, model_dir, monkeypatch):
    staging, production = stores
    stored = staging.put(model_dir)
    real_copy = shutil.copy2
    copied = []

    def crash_after_first_file(src, dst, *args, **kwargs):
        if copied:
            raise KeyboardInterrupt("killed mid-copy")
        copied.append(dst)
        return real_copy(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copy2", crash_after_first_file)
    with pytest.raises(KeyboardInterrupt):
        production.copy_from(staging, stored.uri, stored.digest)
    assert copied  # it really was interrupted mid-way
    assert not production.has(stored.digest) and production.digests() == []
    monkeypatch.setattr(shutil, "copy2", real_copy)
    # A hard kill leaves the temp folder behind: still invisible, and the rerun ignores it.
    models = production.local_path(production.uri_for(stored.digest)).parent
    leftover = models / f"{TEMP_PREFIX}{stored.digest[7:23]}-deadbeef"
    shutil.copytree(model_dir, leftover)
    (leftover / "model.joblib").write_bytes(b"half")
    assert production.digests() == []
    copied_model = production.copy_from(staging, stored.uri, stored.digest)
    production.verify(copied_model.uri, stored.digest)
    assert production.digests() == [stored.digest]


def test_put_rejects_what_is_not_a_model_directory(stores, tmp_path):
    staging, _ = stores
    with pytest.raises(ArtifactError, match="does not exist"):
        staging.put(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="holds no files"):
        staging.put(tmp_path / "empty")


def test_unimplemented_object_store_schemes_are_a_clear_error(project_copy, monkeypatch):
    monkeypatch.setenv("MLOPS_BACKEND", "cluster")
    env = config.load().env("production")
    cluster = env.cluster.model_copy(update={"artifact_root": "abfs://models-bucket"})
    env = dataclasses.replace(env, cluster=cluster)
    with pytest.raises(ArtifactError, match=r"uses abfs://, which this build does not implement"):
        ArtifactStore(env)
