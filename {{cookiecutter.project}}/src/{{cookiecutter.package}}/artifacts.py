"""Each environment's own content-addressed model store.

A model is a directory (KServe downloads and serves the directory named by `storageUri`). The
store keeps it at `<artifact_root>/models/sha256-<hex>/`, where the hex is the digest of its
content, so a URI names exactly one model forever: `model.yaml` can point at it immutably, a put
of the same model is a no-op and a copy can be verified end to end.

Writes are atomic: a model is assembled in a hidden temp folder beside its final place and then
renamed into it, so a crash at any point leaves no partial model visible and a rerun converges.

Backends are chosen by the scheme of `env.artifact_root`. The local backend (a folder standing
for the environment's bucket, URIs `file:///...`) is implemented here; an object-store backend
(s3://, gs://) plugs in by implementing `StoreBackend` and adding it to `BACKENDS`.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse

from .config import Environment
from .errors import MlopsError

DIGEST_PREFIX = "sha256:"
MODELS_DIR = "models"
TEMP_PREFIX = ".tmp-"
STALE_TEMP_SECONDS = 3600  # a temp folder this old belongs to a crashed run, never to a live one
_HEX = re.compile(r"^[0-9a-f]{64}$")


class ArtifactError(MlopsError):
    """A model is missing from a store, differs from its digest, or a URI is not in the store."""


@dataclass(frozen=True)
class StoredModel:
    uri: str  # versioned and content-addressed: <root>/models/sha256-<hex>
    digest: str  # sha256:<hex> over the model directory


def directory_digest(path: Path) -> str:
    """sha256 over the sorted (relative posix path, file bytes) pairs of a directory.

    Independent of where the directory lives, of timestamps and of permissions, so a copy in
    another store has the same digest.
    """
    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"model directory {path} does not exist or is not a directory")
    files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
    if not files:
        raise ArtifactError(f"model directory {path} holds no files")
    outer = hashlib.sha256()
    for file in files:
        inner = hashlib.sha256()
        with open(file, "rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                inner.update(block)
        # Length-free framing is safe: the path cannot contain NUL and the inner hash is fixed-size.
        outer.update(file.relative_to(path).as_posix().encode() + b"\0" + inner.digest())
    return DIGEST_PREFIX + outer.hexdigest()


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

    def local_path(self, uri: str) -> Path:
        path = Path(_strip_file_scheme(uri))
        if not path.is_absolute():
            raise ArtifactError(f"model URI {uri!r} must be absolute (file:///...) in the {self.env_name} store")
        path = Path(os.path.normpath(path))
        if path.parent != self.models or not re.match(r"^sha256-[0-9a-f]{64}$", path.name):
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
            if p.is_dir() and re.match(r"^sha256-[0-9a-f]{64}$", p.name)
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


BACKENDS: dict[str, type] = {"file": LocalBackend}


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
        self.backend: StoreBackend = BACKENDS[scheme](env.name, env.artifact_root)

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
        path = self.local_path(uri)
        if path.name != object_name(digest):
            raise ArtifactError(
                f"{self.env.name}: model URI {uri} does not match digest {digest} "
                f"(a content-addressed URI ends in {object_name(digest)})"
            )
        if not path.is_dir():
            raise ArtifactError(f"{self.env.name}: model {uri} is missing from the store (expected digest {digest})")
        actual = directory_digest(path)
        if actual != digest:
            raise ArtifactError(
                f"{self.env.name}: model {uri} has digest {actual} but {digest} was expected; "
                "the stored copy was modified — remove it and copy or register the model again"
            )

    def copy_from(self, source: ArtifactStore, uri: str, digest: str) -> StoredModel:
        """Copy a verified model from another environment's store into this one, then verify it here."""
        source.verify(uri, digest)
        if not self.has(digest):
            self.backend.publish(source.local_path(uri), digest)
        target = self.uri_for(digest)
        self.verify(target, digest)
        return StoredModel(uri=target, digest=digest)
