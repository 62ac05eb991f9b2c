"""Each environment's own content-addressed model store.

A model is a directory (KServe downloads and serves the directory named by `storageUri`). The
store keeps it at `<artifact_root>/models/sha256-<hex>/`, where the hex is the digest of its
content, so a URI names exactly one model forever: a release can point at it immutably, a put
of the same model is a no-op and a copy can be verified end to end.

Writes are atomic: a model is assembled in a hidden temp folder beside its final place and then
renamed into it, so a crash at any point leaves no partial model visible and a rerun converges.

Backends are chosen by the scheme of `env.artifact_root`: a local folder standing for the
environment's bucket (`file:///...`), S3 or any S3-compatible store (`s3://bucket[/prefix]`) and
Google Cloud Storage (`gs://bucket[/prefix]`, the `gcp` extra) on the cluster backend. An object
store has no rename, so a model counts as present only once its completion marker
`models/sha256-<hex>/.complete` (written last, holding the digest) exists: an interrupted upload
stays invisible and a rerun uploads again and converges. Every object-store call has connect and
read timeouts and bounded retries from `timeouts:` in config.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
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


class ObjectBackend:
    """A bucket of an object store (`<scheme>://<bucket>[/<prefix>]`), objects `models/sha256-<hex>/<path>`.

    An object store has no rename, so a model counts as present only once its completion marker
    (written last, holding the digest) exists. Subclasses provide the few primitive calls of
    their store; every semantic (addressing, markers, digests, verification, caching) is here,
    so s3:// and gs:// behave alike.
    """

    scheme = ""

    def __init__(self, env_name: str, root: str, cache_dir: Path, timeouts: Any) -> None:
        self.env_name = env_name
        parsed = urlparse(root)
        self.bucket = parsed.netloc
        if parsed.scheme != self.scheme or not self.bucket or parsed.query or parsed.fragment:
            raise ArtifactError(
                f"the {env_name} artifact root {root!r} is not of the form {self.scheme}://<bucket>[/<prefix>]"
            )
        prefix = parsed.path.strip("/")
        self.prefix = f"{prefix}/{MODELS_DIR}/" if prefix else f"{MODELS_DIR}/"
        self.root_uri = f"{self.scheme}://{self.bucket}/{prefix}".rstrip("/")
        self.cache = Path(cache_dir)
        self.timeouts = timeouts
        self._client: Any = None

    # --- what a store provides -------------------------------------------------------------

    def _errors(self, action: str) -> AbstractContextManager[None]:
        raise NotImplementedError

    def _list(self, bucket: str, prefix: str) -> Iterator[str]:
        """Every key under `prefix` in `bucket`."""
        raise NotImplementedError

    def _read_small(self, key: str) -> bytes | None:
        """A small object's bytes, None when it does not exist."""
        raise NotImplementedError

    def _stream(self, bucket: str, key: str) -> Iterator[bytes]:
        raise NotImplementedError

    def _download(self, key: str, target: Path) -> None:
        raise NotImplementedError

    def _upload(self, source: Path, key: str) -> None:
        raise NotImplementedError

    def _put_bytes(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def _copy(self, source_bucket: str, source_key: str, key: str) -> None:
        """Server-side copy into this bucket: no bytes pass through this machine."""
        raise NotImplementedError

    # --- addressing -------------------------------------------------------------------------

    def _key(self, digest: str, relative: str = "") -> str:
        return f"{self.prefix}{object_name(digest)}/{relative}"

    def _where(self, bucket: str, key: str) -> str:
        return f"{self.scheme}://{bucket}/{key}"

    def uri_for(self, digest: str) -> str:
        return self._where(self.bucket, self._key(digest)).rstrip("/")

    def split(self, uri: str) -> tuple[str, str]:
        """(bucket, key) of a URI of this store's scheme."""
        parsed = urlparse(uri)
        if parsed.scheme != self.scheme or not parsed.netloc or parsed.query or parsed.fragment:
            raise ArtifactError(
                f"{uri!r} is not a {self.scheme}:// URI of the form {self.scheme}://<bucket>/<key> "
                f"(the {self.env_name} store is {self.root_uri})"
            )
        return parsed.netloc, parsed.path.lstrip("/")

    def object_of(self, uri: str) -> str:
        parsed = urlparse(uri)
        key = parsed.path.lstrip("/")
        name = key[len(self.prefix) :]
        if (
            parsed.scheme != self.scheme
            or parsed.netloc != self.bucket
            or not key.startswith(self.prefix)
            or not _OBJECT.match(name)
        ):
            raise ArtifactError(
                f"model URI {uri} is not in the {self.env_name} store; expected "
                f"{self.scheme}://{self.bucket}/{self.prefix}sha256-<hex>"
            )
        return name

    # --- models -----------------------------------------------------------------------------

    def has(self, digest: str) -> bool:
        key = self._key(digest, COMPLETE_MARKER)
        with self._errors(f"reading {key}"):
            body = self._read_small(key)
        return body is not None and body.decode(errors="replace").strip() == digest

    def _tree(self, bucket: str, base: str) -> list[tuple[str, str]]:
        """(key, relative path) of every object under `base` (a prefix ending in /), the marker excluded."""
        files = []
        with self._errors(f"listing {self._where(bucket, base)}"):
            for key in self._list(bucket, base):
                relative = key[len(base) :]
                if relative and not relative.endswith("/") and relative != COMPLETE_MARKER:
                    files.append((key, relative))
        return sorted(files, key=lambda item: item[1])

    def _files(self, digest: str) -> list[tuple[str, str]]:
        return self._tree(self.bucket, self._key(digest))

    def _object_sha256(self, bucket: str, key: str) -> bytes:
        inner = hashlib.sha256()
        with self._errors(f"reading {self._where(bucket, key)}"):
            for block in self._stream(bucket, key):
                inner.update(block)
        return inner.digest()

    def _tree_digest(self, bucket: str, files: list[tuple[str, str]]) -> str:
        """The directory digest of stored objects, hashed as they stream by; nothing is written to disk."""
        if not files:
            return "(no objects)"
        return _digest_pairs(iter([(relative, self._object_sha256(bucket, key)) for key, relative in files]))

    def stored_digest(self, digest: str) -> str:
        return self._tree_digest(self.bucket, self._files(digest))

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
                    self._download(key, target)
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
                self._upload(file, key)
        self._mark_complete(digest)
        return self.uri_for(digest)

    def remote_model(self, uri: str) -> tuple[str, list[tuple[str, str]], str]:
        """(bucket, objects, digest) of a model directory stored elsewhere in this store's scheme,
        e.g. a pipeline's output under the pipeline root; the digest comes from the objects."""
        bucket, key = self.split(uri)
        base = key.rstrip("/") + "/"
        files = self._tree(bucket, base)
        if not files:
            raise ArtifactError(
                f"{self.env_name}: model {uri} holds no objects; a model is a directory of objects under that prefix"
            )
        if any(relative == COMPLETE_MARKER for _, relative in files):
            raise ArtifactError(f"model {uri} holds an object named {COMPLETE_MARKER}, which the store reserves")
        return bucket, files, self._tree_digest(bucket, files)

    def copy_remote(self, bucket: str, files: list[tuple[str, str]], digest: str) -> str:
        """Server-side copy of a model's objects under its digest, marker last."""
        for key, relative in files:
            target = self._key(digest, relative)
            with self._errors(f"copying {self._where(bucket, key)} to {target}"):
                self._copy(bucket, key, target)
        self._mark_complete(digest)
        return self.uri_for(digest)

    def copy_objects(self, source: ObjectBackend, digest: str) -> str:
        """Server-side copy of a complete model from another environment's bucket, marker last."""
        return self.copy_remote(source.bucket, source._files(digest), digest)

    def _mark_complete(self, digest: str) -> None:
        key = self._key(digest, COMPLETE_MARKER)
        with self._errors(f"writing {key}"):
            self._put_bytes(key, digest.encode())

    def digests(self) -> list[str]:
        found = []
        with self._errors(f"listing {self.prefix}"):
            for key in self._list(self.bucket, self.prefix):
                name, _, rest = key[len(self.prefix) :].partition("/")
                if rest == COMPLETE_MARKER and _OBJECT.match(name):
                    found.append(DIGEST_PREFIX + name[len("sha256-") :])
        return sorted(d for d in found if self.has(d))

    def blocks(self, uri: str) -> Iterator[bytes]:
        """The content of one object (a pipeline artifact such as a dataset or a metrics file)."""
        bucket, key = self.split(uri)
        with self._errors(f"reading {uri}"):
            yield from self._stream(bucket, key)


def _bounded(timeouts: Any, attempts: int) -> tuple[float, float]:
    """Per-attempt (connect, read) seconds so that every attempt together stays within the deadline."""
    share = timeouts.deadline_s / attempts
    return min(timeouts.connect_s, share), min(timeouts.read_s, share)


class S3Backend(ObjectBackend):
    """S3 or any S3-compatible store: `s3://<bucket>[/<prefix>]`.

    The endpoint, credentials and region come from the standard AWS variables and files
    (`AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` for MinIO, Ceph or a test server), as boto3 reads them.
    """

    scheme = "s3"
    ATTEMPTS = 3  # botocore "standard" retries: throttling, 5xx and dropped connections

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3  # only the s3 paths need boto3
            from botocore.config import Config as BotoConfig

            connect, read = _bounded(self.timeouts, self.ATTEMPTS)
            config = BotoConfig(
                connect_timeout=connect,
                read_timeout=read,
                retries={"max_attempts": self.ATTEMPTS, "mode": "standard"},
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
                f"{self.env_name} artifact store (bucket {self.bucket}): {action} failed: {exc}; "
                "raise timeouts.connect_s / read_s / deadline_s in config/environments.yaml if the store is only slow"
            ) from None

    def _list(self, bucket: str, prefix: str) -> Iterator[str]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]

    def _read_small(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    def _stream(self, bucket: str, key: str) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=bucket, Key=key)["Body"]
        yield from iter(lambda: body.read(1 << 20), b"")

    def _download(self, key: str, target: Path) -> None:
        self.client.download_file(self.bucket, key, str(target))

    def _upload(self, source: Path, key: str) -> None:
        self.client.upload_file(str(source), self.bucket, key)

    def _put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def _copy(self, source_bucket: str, source_key: str, key: str) -> None:
        self.client.copy({"Bucket": source_bucket, "Key": source_key}, self.bucket, key)


class GCSBackend(ObjectBackend):
    """A Google Cloud Storage bucket: `gs://<bucket>[/<prefix>]`, through google-cloud-storage.

    Credentials are Application Default Credentials (in CI: google-github-actions/auth);
    `STORAGE_EMULATOR_HOST` points the client at an emulator, as the library documents.
    """

    scheme = "gs"
    ATTEMPTS = 3

    @property
    def client(self) -> Any:
        if self._client is None:
            storage = _gcs()
            with self._errors("connecting"):
                self._client = storage.Client()
        return self._client

    def _call_options(self) -> dict[str, Any]:
        from google.cloud.storage.retry import DEFAULT_RETRY

        # Every request: (connect, read) timeouts; retries of transient errors end at the deadline.
        return {
            "timeout": _bounded(self.timeouts, self.ATTEMPTS),
            "retry": DEFAULT_RETRY.with_timeout(self.timeouts.deadline_s),
        }

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        from google.api_core import exceptions as api
        from google.auth import exceptions as auth
        from requests import exceptions as http

        try:
            yield
        except api.GoogleAPICallError as exc:
            raise ArtifactError(
                f"{self.env_name} artifact store (bucket {self.bucket}): {action} failed: {exc.code} {exc.message}"
            ) from None
        except (api.RetryError, auth.GoogleAuthError, http.RequestException) as exc:
            reason = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise ArtifactError(
                f"{self.env_name} artifact store (bucket {self.bucket}): {action} failed: {reason}; "
                "raise timeouts.connect_s / read_s / deadline_s in config/environments.yaml if the store is only slow"
            ) from None

    def _blob(self, bucket: str, key: str) -> Any:
        return self.client.bucket(bucket).blob(key)

    def _list(self, bucket: str, prefix: str) -> Iterator[str]:
        for blob in self.client.list_blobs(bucket, prefix=prefix, **self._call_options()):
            yield blob.name

    def _read_small(self, key: str) -> bytes | None:
        from google.api_core.exceptions import NotFound

        try:
            return self._blob(self.bucket, key).download_as_bytes(**self._call_options())
        except NotFound:
            return None

    def _stream(self, bucket: str, key: str) -> Iterator[bytes]:
        # One ranged GET per chunk keeps memory flat for large objects.
        with self._blob(bucket, key).open("rb", chunk_size=1 << 20, **self._call_options()) as reader:
            yield from iter(lambda: reader.read(1 << 20), b"")

    def _download(self, key: str, target: Path) -> None:
        self._blob(self.bucket, key).download_to_filename(str(target), **self._call_options())

    def _upload(self, source: Path, key: str) -> None:
        # Content-addressed keys make a retried upload harmless, so retries need no precondition.
        self._blob(self.bucket, key).upload_from_filename(str(source), **self._call_options())

    def _put_bytes(self, key: str, data: bytes) -> None:
        self._blob(self.bucket, key).upload_from_string(data, **self._call_options())

    def _copy(self, source_bucket: str, source_key: str, key: str) -> None:
        source = self.client.bucket(source_bucket)
        source.copy_blob(source.blob(source_key), self.client.bucket(self.bucket), key, **self._call_options())


def _gcs() -> Any:
    try:
        storage = importlib.import_module("google.cloud.storage")
    except ImportError:
        raise ArtifactError(
            "a gs:// artifact root needs google-cloud-storage: install the engine with its gcp extra "
            "(pip install 'mlrail[gcp]')"
        ) from None
    return storage


def _timeouts(env: Environment) -> Any:
    from .config import Timeouts

    return getattr(env, "timeouts", None) or Timeouts()


BACKENDS: dict[str, Callable[[Environment], StoreBackend]] = {
    "file": lambda env: LocalBackend(env.name, env.artifact_root),
    "s3": lambda env: S3Backend(env.name, env.artifact_root, env.local_dir / CACHE_DIR, _timeouts(env)),
    "gs": lambda env: GCSBackend(env.name, env.artifact_root, env.local_dir / CACHE_DIR, _timeouts(env)),
}


def remote_scheme(uri: Path | str) -> str | None:
    """The object-store scheme (s3, gs) of a URI, None for a local path or file:// URI."""
    if not isinstance(uri, str):
        return None
    scheme = _scheme(uri)
    return scheme if scheme in OBJECT_SCHEMES else None


OBJECT_SCHEMES = ("s3", "gs")


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

    def put(self, model: Path | str) -> StoredModel:
        """Store a model directory under its digest; the same content always gives the same URI.

        `model` is a local directory, or the URI of a directory in this store's object store
        (`s3://…`, `gs://…`: a pipeline run's output under the pipeline root), which is copied
        server-side, its digest computed from the objects.
        """
        scheme = remote_scheme(model)
        if scheme is not None:
            return self._put_remote(str(model), scheme)
        model_dir = Path(model)
        digest = directory_digest(model_dir)
        uri = self.uri_for(digest)
        if not self.has(digest):
            uri = self.backend.publish(model_dir, digest)
        self.verify(uri, digest)
        return StoredModel(uri=uri, digest=digest)

    def _put_remote(self, uri: str, scheme: str) -> StoredModel:
        backend = self.backend
        if not isinstance(backend, ObjectBackend) or backend.scheme != scheme:
            raise ArtifactError(
                f"{self.env.name}: model {uri} is in {scheme}:// but the {self.env.name} store is "
                f"{self.root_uri}; a pipeline's model must be in the store of the environment that ran it"
            )
        bucket, files, digest = backend.remote_model(uri)
        if not self.has(digest):
            backend.copy_remote(bucket, files, digest)
        stored = self.uri_for(digest)
        self.verify(stored, digest)
        return StoredModel(uri=stored, digest=digest)

    def blocks(self, uri: str) -> Iterator[bytes]:
        """The content of one artifact object of this environment (a local path or an object URI)."""
        if isinstance(self.backend, ObjectBackend):
            yield from self.backend.blocks(uri)
            return
        path = file_uri_path(uri) if _scheme(uri) == "file" else None
        if path is None or not path.is_file():
            raise ArtifactError(f"{self.env.name}: artifact {uri} is not a file of this machine")
        with open(path, "rb") as handle:
            yield from iter(lambda: handle.read(1 << 20), b"")

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
            same_store = isinstance(self.backend, ObjectBackend) and type(source.backend) is type(self.backend)
            if same_store:
                self.backend.copy_objects(source.backend, digest)  # server-side: no bytes pass through here
            else:
                self.backend.publish(source.local_path(uri), digest)
        target = self.uri_for(digest)
        self.verify(target, digest)
        return StoredModel(uri=target, digest=digest)
