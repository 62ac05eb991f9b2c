"""Object-store stand-ins of the cluster simulation, on 127.0.0.1: moto's S3 server and the
`gcp-storage-emulator` GCS server, one bucket per environment.

Each emulator lives for a test module (starting one takes a second) and is emptied for every
test; the engine reaches it only through the variables its client libraries document
(`AWS_ENDPOINT_URL`, `STORAGE_EMULATOR_HOST`), never through an endpoint passed in code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from urllib.parse import urlparse

import pytest

REGION = "us-east-1"


def bucket_of(uri: str) -> str:
    return urlparse(uri).netloc


class S3Emulator:
    """moto's ThreadedMotoServer: the S3 REST API (multipart uploads, server-side copy, listing)."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.url = ""

    def start(self) -> S3Emulator:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    def client(self):
        import boto3

        return boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=REGION
        ).client("s3", endpoint_url=self.url)

    def use(self, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
        """Point boto3 (in this process and in the subprocesses it starts) at this server."""
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_ENDPOINT_URL", self.url)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))

    def reset(self, buckets: Iterable[str]) -> None:
        """Every bucket in `buckets` exists and is empty; others are removed."""
        client = self.client()
        wanted = set(buckets)
        for bucket in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
            self._empty(client, bucket)
            if bucket not in wanted:
                client.delete_bucket(Bucket=bucket)
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        for bucket in sorted(wanted - existing):
            client.create_bucket(Bucket=bucket)

    @staticmethod
    def _empty(client, bucket: str) -> None:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=item["Key"])

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        client = self.client()
        found = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found += [item["Key"] for item in page.get("Contents", [])]
        return sorted(found)

    def read(self, uri: str) -> bytes:
        parsed = urlparse(uri)
        return self.client().get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()


class GCSEmulator:
    """gcp-storage-emulator in memory: the JSON API google-cloud-storage speaks (uploads, rewrite, list)."""

    def __init__(self) -> None:
        from gcp_storage_emulator.server import create_server

        logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
        self._server = create_server("127.0.0.1", 0, in_memory=True)
        self.url = ""

    def start(self) -> GCSEmulator:
        self._server.start()
        # The emulator binds port 0 and keeps the socket on its API thread.
        port = self._server._api._httpd.server_port
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        self._server.stop()

    def use(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", self.url)
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "mlrail-test")

    def client(self):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project="mlrail-test", credentials=AnonymousCredentials(), client_options={"api_endpoint": self.url}
        )

    def reset(self, buckets: Iterable[str]) -> None:
        self._server.wipe()
        client = self.client()
        for bucket in sorted(set(buckets)):
            client.create_bucket(bucket)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        return sorted(blob.name for blob in self.client().list_blobs(bucket, prefix=prefix))

    def read(self, uri: str) -> bytes:
        parsed = urlparse(uri)
        return self.client().bucket(parsed.netloc).blob(parsed.path.lstrip("/")).download_as_bytes()


def environment_buckets(cfg) -> list[str]:
    """One bucket per environment, as config/environments.yaml names them (cluster.artifact_root)."""
    return [bucket_of(env.cluster.artifact_root) for env in cfg.environments.values()]


@pytest.fixture(scope="module")
def s3_emulator() -> Iterator[S3Emulator]:
    server = S3Emulator().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gcs_emulator() -> Iterator[GCSEmulator]:
    server = GCSEmulator().start()
    try:
        yield server
    finally:
        server.stop()
