"""The s3:// model store of the cluster backend, against a real S3 API (moto) on 127.0.0.1."""

import time

import pytest

from mlrail import config
from mlrail.artifacts import (
    CACHE_DIR,
    COMPLETE_MARKER,
    ArtifactError,
    ArtifactStore,
    S3Backend,
    directory_digest,
)
from sim.storage import environment_buckets, s3_emulator  # noqa: F401 - the module's S3 server

BUCKETS = ("churn-classifier-staging-models", "churn-classifier-production-models")


@pytest.fixture()
def stores(s3_emulator, project_copy, monkeypatch, tmp_path):  # noqa: F811
    # No endpoint is passed in code: boto3 itself must honour the standard variable.
    s3_emulator.use(monkeypatch, tmp_path)
    monkeypatch.setenv("MLOPS_BACKEND", "cluster")
    cfg = config.load()
    # Every test starts from empty buckets; sandbox's bucket is left out on purpose.
    s3_emulator.reset([b for b in environment_buckets(cfg) if b in BUCKETS])
    return ArtifactStore(cfg.env("staging")), ArtifactStore(cfg.env("production"))


@pytest.fixture()
def model_dir(tmp_path):
    folder = tmp_path / "trained" / "model"
    (folder / "extra").mkdir(parents=True)
    (folder / "model.joblib").write_bytes(b"weights-" * 1000)
    (folder / "extra" / "meta.json").write_text('{"framework": "sklearn"}')
    (folder / "README").write_text("a model")
    return folder


def keys(store, bucket):
    return sorted(item["Key"] for item in store.backend.client.list_objects_v2(Bucket=bucket).get("Contents", []))


def count_calls(monkeypatch, client, *names):
    calls = []
    for name in names:
        real = getattr(client, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(client, name, counted)
    return calls


def test_put_uploads_once_under_the_digest_with_the_marker_last(stores, model_dir, monkeypatch):
    staging, _ = stores
    assert isinstance(staging.backend, S3Backend)
    digest = directory_digest(model_dir)
    assert not staging.has(digest) and staging.digests() == []
    stored = staging.put(model_dir)
    assert stored.digest == digest
    assert stored.uri == f"s3://{BUCKETS[0]}/models/sha256-{digest[7:]}" == staging.uri_for(digest)
    prefix = f"models/sha256-{digest[7:]}/"
    assert keys(staging, BUCKETS[0]) == sorted(
        prefix + name for name in ("README", "extra/meta.json", "model.joblib", COMPLETE_MARKER)
    )
    marker = staging.backend.client.get_object(Bucket=BUCKETS[0], Key=prefix + COMPLETE_MARKER)
    assert marker["Body"].read().decode() == digest
    assert staging.has(digest) and staging.digests() == [digest]
    calls = count_calls(monkeypatch, staging.backend.client, "upload_file", "put_object")
    assert staging.put(model_dir) == stored  # same content, same URI
    assert calls == []  # and nothing uploaded again
    staging.verify(stored.uri, stored.digest)


def test_an_interrupted_upload_stays_invisible_and_a_rerun_converges(stores, model_dir, monkeypatch):
    staging, _ = stores
    client = staging.backend.client
    real_upload = client.upload_file
    uploaded = []

    def crash_after_first_file(filename, bucket, key, *args, **kwargs):
        if uploaded:
            raise KeyboardInterrupt("killed mid-upload")
        uploaded.append(key)
        return real_upload(filename, bucket, key, *args, **kwargs)

    monkeypatch.setattr(client, "upload_file", crash_after_first_file)
    with pytest.raises(KeyboardInterrupt):
        staging.put(model_dir)
    digest = directory_digest(model_dir)
    assert keys(staging, BUCKETS[0]) == uploaded  # one object, no marker
    assert not staging.has(digest) and staging.digests() == []
    with pytest.raises(ArtifactError, match="missing from the store"):
        staging.verify(staging.uri_for(digest), digest)
    monkeypatch.setattr(client, "upload_file", real_upload)
    stored = staging.put(model_dir)
    assert staging.has(digest) and staging.digests() == [digest]
    staging.verify(stored.uri, digest)


def test_tampering_is_detected_with_env_uri_and_both_digests(stores, model_dir):
    staging, production = stores
    stored = staging.put(model_dir)
    key = f"models/sha256-{stored.digest[7:]}/model.joblib"
    staging.backend.client.put_object(Bucket=BUCKETS[0], Key=key, Body=b"poisoned")
    with pytest.raises(ArtifactError) as caught:
        staging.verify(stored.uri, stored.digest)
    message = str(caught.value)
    assert "staging" in message and stored.uri in message and stored.digest in message
    (model_dir / "model.joblib").write_bytes(b"poisoned")
    assert directory_digest(model_dir) in message  # the actual digest of what is stored
    with pytest.raises(ArtifactError, match="was expected"):
        staging.local_path(stored.uri)  # never handed out for serving either
    with pytest.raises(ArtifactError, match="was expected"):  # a tampered source is never copied
        production.copy_from(staging, stored.uri, stored.digest)
    assert not production.has(stored.digest) and keys(production, BUCKETS[1]) == []


def test_copy_from_staging_to_production_is_server_side_verified_and_idempotent(stores, model_dir, monkeypatch):
    staging, production = stores
    stored = staging.put(model_dir)
    client = production.backend.client
    calls = count_calls(monkeypatch, client, "upload_file", "copy")
    copied = production.copy_from(staging, stored.uri, stored.digest)
    assert copied.digest == stored.digest and copied.uri == f"s3://{BUCKETS[1]}/models/sha256-{stored.digest[7:]}"
    assert calls == ["copy"] * 3  # one server-side copy per file, no upload through this machine
    assert [k.split("/", 2)[2] for k in keys(production, BUCKETS[1])] == sorted(
        ["README", "extra/meta.json", "model.joblib", COMPLETE_MARKER]
    )
    production.verify(copied.uri, copied.digest)
    assert production.digests() == [stored.digest]
    calls.clear()
    assert production.copy_from(staging, stored.uri, stored.digest) == copied  # idempotent
    assert calls == []
    with pytest.raises(ArtifactError, match="is not in the production store"):
        production.verify(stored.uri, stored.digest)  # environments never read each other's store


def test_copy_from_a_local_store_uploads(stores, model_dir, project_copy, monkeypatch):
    _, production = stores
    monkeypatch.setenv("MLOPS_BACKEND", "local")
    local = ArtifactStore(config.load().env("staging"))
    stored = local.put(model_dir)
    copied = production.copy_from(local, stored.uri, stored.digest)
    assert copied.uri.startswith("s3://") and production.has(stored.digest)
    production.verify(copied.uri, copied.digest)


def test_local_path_downloads_into_the_environment_cache_and_checks_the_digest(stores, model_dir):
    staging, _ = stores
    stored = staging.put(model_dir)
    path = staging.local_path(stored.uri)
    assert path == staging.env.local_dir / CACHE_DIR / f"sha256-{stored.digest[7:]}"
    assert directory_digest(path) == stored.digest
    assert (path / "model.joblib").read_bytes() == (model_dir / "model.joblib").read_bytes()
    assert not (path / COMPLETE_MARKER).exists()
    (path / "model.joblib").write_bytes(b"changed on disk")  # a damaged cache is replaced, not trusted
    assert directory_digest(staging.local_path(stored.uri)) == stored.digest
    absent = "sha256:" + "0" * 64
    with pytest.raises(ArtifactError, match="missing from the store"):
        staging.local_path(staging.uri_for(absent))
    with pytest.raises(ArtifactError, match="is not in the staging store"):
        staging.local_path(f"s3://{BUCKETS[1]}/models/sha256-{stored.digest[7:]}")


def test_s3_errors_name_the_environment_and_the_bucket(stores, model_dir):
    cfg = config.load()
    sandbox = ArtifactStore(cfg.env("sandbox"))  # its bucket was never created
    with pytest.raises(ArtifactError, match=r"sandbox artifact store \(bucket churn-classifier-sandbox-models\)"):
        sandbox.put(model_dir)


def pipeline_output(store, model_dir, run: str = "run-1") -> str:
    """Upload a model directory the way KFP's launcher writes a pipeline output, and return its URI."""
    client, bucket = store.backend.client, BUCKETS[0]
    key = f"pipeline-root/churn-classifier-training/{run}/train/17/model"
    for file in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        client.put_object(Bucket=bucket, Key=f"{key}/{file.relative_to(model_dir).as_posix()}", Body=file.read_bytes())
    return f"s3://{bucket}/{key}"


def test_put_accepts_a_pipeline_output_uri_and_copies_it_server_side(stores, model_dir, monkeypatch):
    # The staging defect: the cluster run returns an s3:// model URI and the store must take it.
    staging, _ = stores
    uri = pipeline_output(staging, model_dir)
    calls = count_calls(monkeypatch, staging.backend.client, "upload_file", "download_file", "copy")
    stored = staging.put(uri)
    assert stored.digest == directory_digest(model_dir)  # computed from the objects, same as a local put
    assert stored.uri == staging.uri_for(stored.digest)
    assert calls == ["copy"] * 3  # server-side, nothing through this machine
    staging.verify(stored.uri, stored.digest)
    calls.clear()
    assert staging.put(uri + "/") == stored and calls == []  # idempotent, trailing slash or not
    assert staging.put(model_dir) == stored  # the same model from disk lands on the same object


def test_put_of_a_remote_uri_with_no_objects_or_another_scheme_names_it(stores, model_dir):
    staging, _ = stores
    missing = f"s3://{BUCKETS[0]}/pipeline-root/nothing/here"
    with pytest.raises(ArtifactError, match=r"staging: model s3://\S+/nothing/here holds no objects"):
        staging.put(missing)
    with pytest.raises(ArtifactError, match=r"is in gs:// but the staging store is s3://"):
        staging.put("gs://elsewhere/pipeline-root/model")
    assert staging.digests() == []


def test_an_interrupted_remote_put_converges(stores, model_dir, monkeypatch):
    staging, _ = stores
    uri = pipeline_output(staging, model_dir)
    client = staging.backend.client
    real_copy = client.copy
    copied = []

    def crash_after_first(*args, **kwargs):
        if copied:
            raise KeyboardInterrupt("killed mid-copy")
        copied.append(args)
        return real_copy(*args, **kwargs)

    monkeypatch.setattr(client, "copy", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        staging.put(uri)
    assert staging.digests() == []  # no marker: the partial copy is invisible
    monkeypatch.setattr(client, "copy", real_copy)
    stored = staging.put(uri)
    assert staging.digests() == [stored.digest]


def test_a_dead_endpoint_fails_within_the_deadline(stores, model_dir, monkeypatch):
    import dataclasses
    import socket

    staging, _ = stores
    listener = socket.socket()  # accepts connections (the kernel backlog) and never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{listener.getsockname()[1]}")
        env = staging.env
        timeouts = env.timeouts.model_copy(update={"connect_s": 0.5, "read_s": 0.5, "deadline_s": 1.5})
        slow = ArtifactStore(dataclasses.replace(env, timeouts=timeouts))
        started = time.monotonic()
        with pytest.raises(ArtifactError, match=r"staging artifact store .* failed: .*raise timeouts\."):
            slow.has("sha256:" + "0" * 64)
        assert time.monotonic() - started < 10
    finally:
        listener.close()
