"""Each environment's own content-addressed model store.

A model is a directory (KServe downloads and serves the directory named by `storageUri`). The
store keeps it at `<artifact_root>/models/sha256-<hex>/`, where the hex is the digest of its
content, so a URI names exactly one model forever: `model.yaml` can point at it immutably, a put
of the same model is a no-op and a copy can be verified end to end.

Writes are atomic: a model is assembled in a hidden temp folder beside its final place and then
renamed into it, so a crash at any point leaves no partial model visible and a rerun converges.

Backends are chosen by the scheme of `env.artifact_root`: a local folder standing for the
environment's bucket (`file:///...`) and S3 or any S3-compatible store (`s3://bucket[/prefix]`,
the cluster backend). On S3 a rename does not exist, so a model counts as present only once its
completion marker `models/sha256-<hex>/.complete` (written last, holding the digest) exists: an
interrupted upload stays invisible and a rerun uploads again and converges. Another scheme
(gs://) plugs in by implementing `StoreBackend` and adding a factory to `BACKENDS`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from .config import Environment
from .errors import MlopsError

DIGEST_PREFIX = "sha256:"
MODELS_DIR = "models"
TEMP_PREFIX = ".tmp-"
STALE_TEMP_SECONDS = 3600  # a temp folder this old belongs to a crashed run, never to a live one
_HEX = re.compile(r"^[0-9a-f]{64}$")
_OBJECT = re.compile(r"^sha256-[0-9a-f]{64}$")
COMPLETE_MARKER = ".complete"  # the S3 object written last: a model without it does not exist
CACHE_DIR = "artifact-cache"  # under env.local_dir: verified local copies of object-store models
# botocore settings: fail fast on a dead endpoint, ride out throttling and transient 5xx.
S3_CONNECT_TIMEOUT = 10
S3_READ_TIMEOUT = 120
S3_MAX_ATTEMPTS = 5


class ArtifactError(MlopsError):
    """A model is missing from a store, differs from its digest, or a URI is not in the store."""


@dataclass(frozen=True)
class StoredModel:
    uri: str  # versioned and content-addressed: <root>/models/sha256-<hex>
    digest: str  # sha256:<hex> over the model directory


def _digest_pairs(pairs: Iterator[tuple[str, bytes]]) -> str:
    """The directory digest from (relative posix path, sha256 of the file) pairs in any order."""
    outer = hashlib.sha256()
    # Length-free framing is safe: the path cannot contain NUL and the inner hash is fixed-size.
    for relative, inner in sorted(pairs):
        outer.update(relative.encode() + b"\0" + inner)
    return DIGEST_PREFIX + outer.hexdigest()


def directory_digest(path: Path) -> str:
    """sha256 over the sorted (relative posix path, file bytes) pairs of a directory.

    Independent of where the directory lives, of timestamps and of permissions, so a copy in
    another store has the same digest.
    """
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"model directory {path} does not exist or is not a directory")
    files = [p for p in path.rglob("*") if p.is_file()]
    if not files:
        raise ArtifactError(f"model directory {path} holds no files")

    def pairs() -> Iterator[tuple[str, bytes]]:
        for file in files:
            inner = hashlib.sha256()
            with open(file, "rb") as handle:
                for block in iter(lambda h=handle: h.read(1 << 20), b""):
                    inner.update(block)
            yield file.relative_to(path).as_posix(), inner.digest()

    return _digest_pairs(pairs())


def digest_hex(digest: str) -> str:
    """The hex part of `sha256:<hex>`; ArtifactError for anything else."""
    if not isinstance(digest, str) or not digest.startswith(DIGEST_PREFIX) or not _HEX.match(digest[7:]):
        raise ArtifactError(f"digest {digest!r} is not of the form sha256:<64 hex digits>")
    return digest[len(DIGEST_PREFIX) :]


def object_name(digest: str) -> str:
    """The folder name a model with this digest has in every store."""
    return f"sha256-{digest_hex(digest)}"


class StoreBackend(Protocol):
    """What a storage scheme must provide; every method takes or returns content addresses."""

    root_uri: str

    def uri_for(self, digest: str) -> str: ...

    def has(self, digest: str) -> bool: ...

    def local_path(self, uri: str) -> Path: ...

    def object_of(self, uri: str) -> str: ...

    def stored_digest(self, digest: str) -> str: ...

    def publish(self, source_dir: Path, digest: str) -> str: ...

    def digests(self) -> list[str]: ...


class LocalBackend:
    """A folder on this machine standing for the environment's bucket."""

    def __init__(self, env_name: str, root: str) -> None:
        self.env_name = env_name
        self.root = Path(_strip_file_scheme(root)).resolve()
        self.models = self.root / MODELS_DIR
        self.root_uri = self.root.as_uri()

    def uri_for(self, digest: str) -> str:
        return (self.models / object_name(digest)).as_uri()

    def has(self, digest: str) -> bool:
        return (self.models / object_name(digest)).is_dir()

    def object_of(self, uri: str) -> str:
        return self.local_path(uri).name

    def stored_digest(self, digest: str) -> str:
        return directory_digest(self.models / object_name(digest))

    def local_path(self, uri: str) -> Path:
        path = Path(_strip_file_scheme(uri))
        if not path.is_absolute():
            raise ArtifactError(f"model URI {uri!r} must be absolute (file:///...) in the {self.env_name} store")
        path = Path(os.path.normpath(path))
        if path.parent != self.models or not _OBJECT.match(path.name):
            raise ArtifactError(
                f"model URI {uri} is not in the {self.env_name} store; expected {self.models.as_uri()}/sha256-<hex>"
            )
        return path

    def publish(self, source_dir: Path, digest: str) -> str:
        """Copy source_dir into place under its digest: temp folder, fsync, rename."""
        final = self.models / object_name(digest)
        self.models.mkdir(parents=True, exist_ok=True)
        self._clean_stale_temps()
        temp = self.models / f"{TEMP_PREFIX}{digest_hex(digest)[:16]}-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(source_dir, temp, copy_function=_copy_file)
            for file in temp.rglob("*"):
                if file.is_file():
                    file.chmod(0o444)  # stored models are immutable; a stray write fails loudly
            try:
                os.rename(temp, final)
            except OSError:
                if not final.is_dir():  # lost a race to a concurrent writer of the same digest: fine
                    raise
        finally:
            if temp.exists():
                shutil.rmtree(temp, ignore_errors=True)
        return final.as_uri()

    def digests(self) -> list[str]:
        if not self.models.is_dir():
            return []
        return sorted(
            DIGEST_PREFIX + p.name[len("sha256-") :]
            for p in self.models.iterdir()
            if p.is_dir() and _OBJECT.match(p.name)
        )

    def _clean_stale_temps(self) -> None:
        cutoff = time.time() - STALE_TEMP_SECONDS
        for temp in self.models.glob(f"{TEMP_PREFIX}*"):
            try:
                if temp.stat().st_mtime < cutoff:
                    shutil.rmtree(temp, ignore_errors=True)
            except FileNotFoundError:
                pass


def _copy_file(src: str, dst: str) -> str:
    shutil.copy2(src, dst)
    with open(dst, "rb") as handle:  # durable before the rename makes it visible
        os.fsync(handle.fileno())
    return dst


def _strip_file_scheme(uri: str) -> str:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ArtifactError(f"model URI {uri!r} names host {parsed.netloc!r}; expected file:///<absolute path>")
        return unquote(parsed.path)
    return uri


def file_uri_path(uri: str) -> Path | None:
    """The local path of a file:// URI or an absolute path; None for any other scheme."""
    if _scheme(uri) != "file":
        return None
    path = Path(_strip_file_scheme(uri))
    return path if path.is_absolute() else None


def _scheme(root: str) -> str:
    scheme = urlparse(root).scheme
    return scheme if scheme and len(scheme) > 1 else "file"  # a bare path (or a Windows drive) is local


class S3Backend:
    """An S3 (or S3-compatible) bucket: `s3://<bucket>[/<prefix>]`, objects `models/sha256-<hex>/<path>`.

    The endpoint, credentials and region come from the standard AWS variables and files
    (`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` for MinIO, Ceph or a test server), as boto3 reads them.
    """

    def __init__(self, env_name: str, root: str, cache_dir: Path) -> None:
        self.env_name = env_name
        parsed = urlparse(root)
        self.bucket = parsed.netloc
        if not self.bucket or parsed.query or parsed.fragment:
            raise ArtifactError(f"the {env_name} artifact root {root!r} is not of the form s3://<bucket>[/<prefix>]")
        prefix = parsed.path.strip("/")
        self.prefix = f"{prefix}/{MODELS_DIR}/" if prefix else f"{MODELS_DIR}/"
        self.root_uri = f"s3://{self.bucket}/{prefix}".rstrip("/")
        self.cache = Path(cache_dir)
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3  # only the s3 paths need boto3
            from botocore.config import Config as BotoConfig

            config = BotoConfig(
                connect_timeout=S3_CONNECT_TIMEOUT,
                read_timeout=S3_READ_TIMEOUT,
                retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
            )
            with self._errors("connecting"):
                self._client = boto3.session.Session().client("s3", config=config)
        return self._client

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise ArtifactError(
                f"{self.env_name} artifact store (bucket {self.bucket}): {action} failed: "
                f"{error.get('Code', '?')} {error.get('Message', '')}".rstrip()
            ) from None
        except BotoCoreError as exc:
            raise ArtifactError(
                f"{self.env_name} artifact store (bucket {self.bucket}): {action} failed: {exc}"
            ) from None

    def _key(self, digest: str, relative: str = "") -> str:
        return f"{self.prefix}{object_name(digest)}/{relative}"

    def uri_for(self, digest: str) -> str:
        return f"s3://{self.bucket}/{self._key(digest)}".rstrip("/")

    def has(self, digest: str) -> bool:
        from botocore.exceptions import ClientError

        key = self._key(digest, COMPLETE_MARKER)
        with self._errors(f"reading {key}"):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return False
                raise
        return body.decode(errors="replace").strip() == digest

    def object_of(self, uri: str) -> str:
        parsed = urlparse(uri)
        key = parsed.path.lstrip("/")
        name = key[len(self.prefix) :]
        if (
            parsed.scheme != "s3"
            or parsed.netloc != self.bucket
            or not key.startswith(self.prefix)
            or not _OBJECT.match(name)
        ):
            raise ArtifactError(
                f"model URI {uri} is not in the {self.env_name} store; expected s3://{self.bucket}/{self.prefix}sha256-<hex>"
            )
        return name

    def _files(self, digest: str) -> list[tuple[str, str]]:
        """(key, relative path) of every object of a model, the marker excluded."""
        base = self._key(digest)
        files = []
        with self._errors(f"listing {base}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
                for item in page.get("Contents", []):
                    relative = item["Key"][len(base) :]
                    if relative and relative != COMPLETE_MARKER:
                        files.append((item["Key"], relative))
        return files

    def stored_digest(self, digest: str) -> str:
        """Hash the stored objects as they stream by; nothing is written to disk."""

        def pairs() -> Iterator[tuple[str, bytes]]:
            for key, relative in self._files(digest):
                inner = hashlib.sha256()
                with self._errors(f"reading {key}"):
                    body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
                    for block in iter(lambda b=body: b.read(1 << 20), b""):
                        inner.update(block)
                yield relative, inner.digest()

        pairs_list = list(pairs())
        if not pairs_list:
            return "(no objects)"
        return _digest_pairs(iter(pairs_list))

    def local_path(self, uri: str) -> Path:
        """Download a complete model into the cache (once) and return the verified local folder."""
        name = self.object_of(uri)
        digest = DIGEST_PREFIX + name[len("sha256-") :]
        final = self.cache / name
        if final.is_dir() and directory_digest(final) == digest:
            return final
        if not self.has(digest):
            raise ArtifactError(f"{self.env_name}: model {uri} is missing from the store (expected digest {digest})")
        self.cache.mkdir(parents=True, exist_ok=True)
        temp = self.cache / f"{TEMP_PREFIX}{name[7:23]}-{uuid.uuid4().hex[:8]}"
        try:
            for key, relative in self._files(digest):
                target = temp / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with self._errors(f"downloading {key}"):
                    self.client.download_file(self.bucket, key, str(target))
            actual = directory_digest(temp) if temp.is_dir() else "(no objects)"
            if actual != digest:
                raise ArtifactError(
                    f"{self.env_name}: model {uri} has digest {actual} but {digest} was expected; "
                    "the stored copy was modified — remove it and copy or register the model again"
                )
            if final.exists():  # a stale or tampered cached copy: the verified download replaces it
                shutil.rmtree(final)
            try:
                os.rename(temp, final)
            except OSError:
                if not final.is_dir():
                    raise
        finally:
            if temp.exists():
                shutil.rmtree(temp, ignore_errors=True)
        return final

    def publish(self, source_dir: Path, digest: str) -> str:
        """Upload every file, then the marker: only a finished upload ever becomes visible."""
        source_dir = Path(source_dir)
        if (source_dir / COMPLETE_MARKER).exists():
            raise ArtifactError(
                f"model directory {source_dir} holds a file named {COMPLETE_MARKER}, which the store reserves"
            )
        for file in sorted(p for p in source_dir.rglob("*") if p.is_file()):
            key = self._key(digest, file.relative_to(source_dir).as_posix())
            with self._errors(f"uploading {key}"):
                self.client.upload_file(str(file), self.bucket, key)
        self._mark_complete(digest)
        return self.uri_for(digest)

    def copy_objects(self, source: S3Backend, digest: str) -> str:
        """Server-side copy of a complete model from another bucket, marker last."""
        for key, relative in source._files(digest):
            target = self._key(digest, relative)
            with self._errors(f"copying s3://{source.bucket}/{key} to {target}"):
                self.client.copy({"Bucket": source.bucket, "Key": key}, self.bucket, target)
        self._mark_complete(digest)
        return self.uri_for(digest)

    def _mark_complete(self, digest: str) -> None:
        key = self._key(digest, COMPLETE_MARKER)
        with self._errors(f"writing {key}"):
            self.client.put_object(Bucket=self.bucket, Key=key, Body=digest.encode())

    def digests(self) -> list[str]:
        found = []
        with self._errors(f"listing {self.prefix}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
                for item in page.get("Contents", []):
                    name, _, rest = item["Key"][len(self.prefix) :].partition("/")
                    if rest == COMPLETE_MARKER and _OBJECT.match(name):
                        found.append(DIGEST_PREFIX + name[len("sha256-") :])
        return sorted(d for d in found if self.has(d))


BACKENDS: dict[str, Callable[[Environment], StoreBackend]] = {
    "file": lambda env: LocalBackend(env.name, env.artifact_root),
    "s3": lambda env: S3Backend(env.name, env.artifact_root, env.local_dir / CACHE_DIR),
}


class ArtifactStore:
    """The model store of one environment."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        scheme = _scheme(env.artifact_root)
        if scheme not in BACKENDS:
            raise ArtifactError(
                f"the {env.name} artifact store {env.artifact_root} uses {scheme}://, which this build does not "
                f"implement (supported: {', '.join(f'{s}://' for s in BACKENDS)}); in a cluster KServe's storage "
                "initializer reads it directly"
            )
        self.backend: StoreBackend = BACKENDS[scheme](env)

    @property
    def root_uri(self) -> str:
        return self.backend.root_uri

    def uri_for(self, digest: str) -> str:
        """Where a model with this digest lives (or will live) in this store."""
        return self.backend.uri_for(digest)

    def has(self, digest: str) -> bool:
        return self.backend.has(digest)

    def local_path(self, uri: str) -> Path:
        return self.backend.local_path(uri)

    def digests(self) -> list[str]:
        return self.backend.digests()

    def put(self, model_dir: Path) -> StoredModel:
        """Store a model directory under its digest; the same content always gives the same URI."""
        model_dir = Path(model_dir)
        digest = directory_digest(model_dir)
        uri = self.uri_for(digest)
        if not self.has(digest):
            uri = self.backend.publish(model_dir, digest)
        self.verify(uri, digest)
        return StoredModel(uri=uri, digest=digest)

    def verify(self, uri: str, digest: str) -> None:
        """Raise ArtifactError unless `uri` is in this store and its content has `digest`."""
        if self.backend.object_of(uri) != object_name(digest):
            raise ArtifactError(
                f"{self.env.name}: model URI {uri} does not match digest {digest} "
                f"(a content-addressed URI ends in {object_name(digest)})"
            )
        if not self.has(digest):
            raise ArtifactError(f"{self.env.name}: model {uri} is missing from the store (expected digest {digest})")
        actual = self.backend.stored_digest(digest)
        if actual != digest:
            raise ArtifactError(
                f"{self.env.name}: model {uri} has digest {actual} but {digest} was expected; "
                "the stored copy was modified — remove it and copy or register the model again"
            )

    def copy_from(self, source: ArtifactStore, uri: str, digest: str) -> StoredModel:
        """Copy a verified model from another environment's store into this one, then verify it here."""
        source.verify(uri, digest)
        if not self.has(digest):
            if isinstance(self.backend, S3Backend) and isinstance(source.backend, S3Backend):
                self.backend.copy_objects(source.backend, digest)  # server-side: no bytes pass through here
            else:
                self.backend.publish(source.local_path(uri), digest)
        target = self.uri_for(digest)
        self.verify(target, digest)
        return StoredModel(uri=target, digest=digest)
