"""The s3:// model store of the cluster backend, against a real S3 API (moto) on 127.0.0.1."""

import pytest
from moto.server import ThreadedMotoServer

from mlrail import config
from mlrail.artifacts import (
    CACHE_DIR,
    COMPLETE_MARKER,
    ArtifactError,
    ArtifactStore,
    S3Backend,
    directory_digest,
)

BUCKETS = ("churn-classifier-staging-models", "churn-classifier-production-models")


@pytest.fixture(scope="module")
def s3_url():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture()
def stores(s3_url, project_copy, monkeypatch, tmp_path):
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    # No endpoint is passed in code: boto3 itself must honour the standard variable.
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("MLOPS_BACKEND", "cluster")
    cfg = config.load()
    staging, production = ArtifactStore(cfg.env("staging")), ArtifactStore(cfg.env("production"))
    client = staging.backend.client
    for bucket in BUCKETS:  # the server lives for the module: every test starts from empty buckets
        if bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]:
            for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
                client.delete_object(Bucket=bucket, Key=item["Key"])
        else:
            client.create_bucket(Bucket=bucket)
    return staging, production


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
