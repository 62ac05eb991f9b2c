"""The gs:// model store of the cluster backend, against a GCS emulator on 127.0.0.1
(`STORAGE_EMULATOR_HOST`, as google-cloud-storage documents): the same content addressing and
completion-marker semantics as s3://."""

import re
import sys

import pytest

from mlrail import config
from mlrail.artifacts import (
    CACHE_DIR,
    COMPLETE_MARKER,
    ArtifactError,
    ArtifactStore,
    GCSBackend,
    directory_digest,
)
from sim.storage import environment_buckets, gcs_emulator  # noqa: F401 - the module's GCS server

BUCKETS = ("churn-classifier-staging-models", "churn-classifier-production-models")


@pytest.fixture()
def stores(gcs_emulator, project_copy, monkeypatch):  # noqa: F811
    # The cloud choice is the artifact root's scheme: this copy of the project stores on GCS.
    path = project_copy / "config" / "environments.yaml"
    path.write_text(re.sub(r"artifact_root: s3://", "artifact_root: gs://", path.read_text()))
    gcs_emulator.use(monkeypatch)
    monkeypatch.setenv("MLOPS_BACKEND", "cluster")
    cfg = config.load()
    gcs_emulator.reset([b for b in environment_buckets(cfg) if b in BUCKETS])
    return ArtifactStore(cfg.env("staging")), ArtifactStore(cfg.env("production"))


@pytest.fixture()
def model_dir(tmp_path):
    folder = tmp_path / "trained" / "model"
    (folder / "extra").mkdir(parents=True)
    (folder / "model.joblib").write_bytes(b"weights-" * 1000)
    (folder / "extra" / "meta.json").write_text('{"framework": "sklearn"}')
    (folder / "README").write_text("a model")
    return folder


def count_calls(monkeypatch, backend, *names):
    calls = []
    for name in names:
        real = getattr(backend, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(backend, name, counted)
    return calls


def test_put_uploads_once_under_the_digest_with_the_marker_last(stores, model_dir, gcs_emulator, monkeypatch):  # noqa: F811
    staging, _ = stores
    assert isinstance(staging.backend, GCSBackend)
    digest = directory_digest(model_dir)
    assert not staging.has(digest) and staging.digests() == []
    order = count_calls(monkeypatch, staging.backend, "_upload", "_put_bytes")
    stored = staging.put(model_dir)
    assert order == ["_upload"] * 3 + ["_put_bytes"]  # the marker is the last write
    assert stored.uri == f"gs://{BUCKETS[0]}/models/sha256-{digest[7:]}" == staging.uri_for(digest)
    prefix = f"models/sha256-{digest[7:]}/"
    assert gcs_emulator.keys(BUCKETS[0]) == sorted(
        prefix + name for name in ("README", "extra/meta.json", "model.joblib", COMPLETE_MARKER)
    )
    assert gcs_emulator.read(f"gs://{BUCKETS[0]}/{prefix}{COMPLETE_MARKER}").decode() == digest
    assert staging.digests() == [digest]
    order.clear()
    assert staging.put(model_dir) == stored and order == []  # same content: nothing written again
    staging.verify(stored.uri, stored.digest)


def test_an_interrupted_upload_stays_invisible_and_a_rerun_converges(stores, model_dir, monkeypatch):
    staging, _ = stores
    backend = staging.backend
    real_upload = backend._upload
    done = []

    def crash_after_first_file(source, key):
        if done:
            raise KeyboardInterrupt("killed mid-upload")
        done.append(key)
        return real_upload(source, key)

    monkeypatch.setattr(backend, "_upload", crash_after_first_file)
    with pytest.raises(KeyboardInterrupt):
        staging.put(model_dir)
    digest = directory_digest(model_dir)
    assert not staging.has(digest) and staging.digests() == []
    with pytest.raises(ArtifactError, match="missing from the store"):
        staging.verify(staging.uri_for(digest), digest)
    monkeypatch.setattr(backend, "_upload", real_upload)
    stored = staging.put(model_dir)
    staging.verify(stored.uri, digest)


def test_tampering_is_detected_and_a_tampered_model_is_never_copied(stores, model_dir):
    staging, production = stores
    stored = staging.put(model_dir)
    blob = staging.backend.client.bucket(BUCKETS[0]).blob(f"models/sha256-{stored.digest[7:]}/model.joblib")
    blob.upload_from_string(b"poisoned")
    with pytest.raises(ArtifactError, match=r"staging: model gs://\S+ has digest sha256:\w+ but sha256:\w+ was"):
        staging.verify(stored.uri, stored.digest)
    with pytest.raises(ArtifactError, match="was expected"):
        staging.local_path(stored.uri)
    with pytest.raises(ArtifactError, match="was expected"):
        production.copy_from(staging, stored.uri, stored.digest)
    assert not production.has(stored.digest)


def test_copy_from_staging_to_production_is_server_side_and_idempotent(stores, model_dir, monkeypatch):
    staging, production = stores
    stored = staging.put(model_dir)
    calls = count_calls(monkeypatch, production.backend, "_upload", "_copy")
    copied = production.copy_from(staging, stored.uri, stored.digest)
    assert copied.uri == f"gs://{BUCKETS[1]}/models/sha256-{stored.digest[7:]}"
    assert calls == ["_copy"] * 3
    production.verify(copied.uri, copied.digest)
    calls.clear()
    assert production.copy_from(staging, stored.uri, stored.digest) == copied and calls == []
    with pytest.raises(ArtifactError, match="is not in the production store"):
        production.verify(stored.uri, stored.digest)


def test_put_accepts_a_pipeline_output_uri(stores, model_dir, monkeypatch):
    staging, _ = stores
    bucket = staging.backend.client.bucket(BUCKETS[0])
    base = "pipeline-root/churn-classifier-training/run-7/train/3/model"
    for file in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        bucket.blob(f"{base}/{file.relative_to(model_dir).as_posix()}").upload_from_filename(str(file))
    calls = count_calls(monkeypatch, staging.backend, "_upload", "_download", "_copy")
    stored = staging.put(f"gs://{BUCKETS[0]}/{base}")
    assert stored.digest == directory_digest(model_dir) and calls == ["_copy"] * 3
    staging.verify(stored.uri, stored.digest)
    assert b"".join(staging.blocks(f"gs://{BUCKETS[0]}/{base}/README")) == b"a model"


def test_local_path_downloads_into_the_cache_and_checks_the_digest(stores, model_dir):
    staging, _ = stores
    stored = staging.put(model_dir)
    path = staging.local_path(stored.uri)
    assert path == staging.env.local_dir / CACHE_DIR / f"sha256-{stored.digest[7:]}"
    assert directory_digest(path) == stored.digest and not (path / COMPLETE_MARKER).exists()
    (path / "model.joblib").write_bytes(b"changed on disk")
    assert directory_digest(staging.local_path(stored.uri)) == stored.digest


def test_errors_name_the_environment_and_the_bucket(stores, model_dir):
    sandbox = ArtifactStore(config.load().env("sandbox"))  # its bucket was never created
    with pytest.raises(ArtifactError, match=r"sandbox artifact store \(bucket churn-classifier-sandbox-models\)"):
        sandbox.put(model_dir)


def test_a_missing_gcp_extra_is_one_sentence(stores, monkeypatch):
    monkeypatch.setitem(sys.modules, "google.cloud.storage", None)  # as if google-cloud-storage were absent
    store = ArtifactStore(config.load().env("staging"))
    with pytest.raises(ArtifactError, match=r"install the engine with its gcp extra \(pip install 'mlrail\[gcp\]'\)"):
        store.has("sha256:" + "0" * 64)
