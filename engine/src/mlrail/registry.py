"""The MLflow Model Registry of one environment.

Every environment has its own registry (local: `.mlops/<env>/registry.db`, SQLite; cluster: the
MLflow server named in config). A registered version points at the model's content-addressed URI
in that environment's artifact store and carries its lineage as tags, so the model production
serves traces back to the commit, pipeline version, data snapshot and evaluation behind it.

Every version is an MLflow model directory; its signature (input names and types, outputs) is
read from the stored `MLmodel` and recorded as the `signature.inputs` / `signature.outputs` tags,
so `status` shows what a version takes without downloading it. A directory that is not an MLflow
model with a signature and an input example is refused.

Registration is idempotent by digest: the digest is a tag set atomically with the version, so
a rerun after a crash at any point finds the version instead of creating a duplicate.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .artifacts import ArtifactError, ArtifactStore, StoredModel, digest_hex, directory_digest, file_uri_path
from .config import Environment
from .errors import MlopsError
from .mlmodel import ModelFormatError, Signature, check_model_dir

# Lineage tag names: one constant each, so producers and readers agree.
TAG_GIT_COMMIT = "git_commit"
TAG_PIPELINE_VERSION = "pipeline_version"
TAG_DATA_SNAPSHOT = "data_snapshot"
TAG_DIGEST = "digest"
TAG_STORAGE_URI = "storage_uri"  # the content-addressed URI in this environment's store
TAG_METRIC_PREFIX = "metric."  # one tag per metric: metric.accuracy, metric.roc_auc, ...
TAG_SOURCE_ENV = "source_env"  # copies (transit): where the model was validated
TAG_SOURCE_REGISTRY = "source_registry"
TAG_SOURCE_VERSION = "source_version"
TAG_SIGNATURE_INPUTS = "signature.inputs"  # MLflow's JSON of the input schema, as in MLmodel
TAG_SIGNATURE_OUTPUTS = "signature.outputs"
LINEAGE_KEYS = (
    TAG_GIT_COMMIT,
    TAG_PIPELINE_VERSION,
    TAG_DATA_SNAPSHOT,
    TAG_DIGEST,
    TAG_SOURCE_ENV,
    TAG_SOURCE_REGISTRY,
    TAG_SOURCE_VERSION,
)

ALIAS_CHAMPION = "champion"  # what the environment's endpoint serves
ALIAS_CHALLENGER = "challenger"  # the candidate under evaluation
HTTP_RETRIES = 3
_ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,254}$")

# MLflow refuses a model-version source on the server's own disk unless it lies inside the
# artifact folder of the run named with it (a security rule of `mlflow server`).
_LOCAL_SOURCE_REFUSED = "To use a local path as a model version source"


def _created_marker(database: Path) -> Path:
    """Written beside a registry database when it is created: from then on its absence is a loss."""
    return database.with_name(database.name + ".created")


class RegistryError(MlopsError):
    """A registry call failed or a version/alias does not exist; names the environment."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    source: str  # the model's content-addressed URI in this environment's store
    digest: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()

    @property
    def metrics(self) -> dict[str, float]:
        """The metric.<name> tags as numbers."""
        found = {}
        for key, value in self.tags.items():
            if key.startswith(TAG_METRIC_PREFIX):
                try:
                    found[key[len(TAG_METRIC_PREFIX) :]] = float(value)
                except ValueError:
                    continue
        return found

    @property
    def signature(self) -> Signature | None:
        """The signature recorded at registration (None for a version registered without one)."""
        inputs = self.tags.get(TAG_SIGNATURE_INPUTS)
        return Signature(inputs, self.tags.get(TAG_SIGNATURE_OUTPUTS, "")) if inputs else None

    @property
    def inputs(self) -> str:
        """`name: type, ...` of the signature's inputs ("" when unknown)."""
        try:
            return self.signature.summary() if self.signature else ""
        except ValueError:
            return "(unreadable signature tag)"

    @property
    def lineage(self) -> dict[str, str]:
        return {key: self.tags[key] for key in LINEAGE_KEYS if key in self.tags}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "digest": self.digest,
            "inputs": self.inputs,
            "aliases": list(self.aliases),
            "tags": dict(self.tags),
        }


def lineage_tags(
    *,
    git_commit: str | None = None,
    pipeline_version: str | None = None,
    data_snapshot: str | None = None,
    metrics: dict[str, float] | None = None,
    source_env: str | None = None,
    source_registry: str | None = None,
    source_version: str | None = None,
    **extra: str,
) -> dict[str, str]:
    """Build the lineage dict `Registry.register` takes, with the agreed tag names."""
    tags = {
        TAG_GIT_COMMIT: git_commit,
        TAG_PIPELINE_VERSION: pipeline_version,
        TAG_DATA_SNAPSHOT: data_snapshot,
        TAG_SOURCE_ENV: source_env,
        TAG_SOURCE_REGISTRY: source_registry,
        TAG_SOURCE_VERSION: source_version,
    }
    out = {key: str(value) for key, value in tags.items() if value is not None}
    for name, value in (metrics or {}).items():
        out[f"{TAG_METRIC_PREFIX}{name}"] = repr(float(value))
    out.update({key: str(value) for key, value in extra.items()})
    return out


def _quiet_mlflow() -> None:
    # First use of a SQLite registry runs its migrations and logs them at INFO on stderr.
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.store.model_registry", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # It logs every database error with its traceback before raising it: the raised error
    # becomes one RegistryError line here (a locked or read-only database), so keep it quiet.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def _quote(value: str) -> str:
    """A single-quoted string literal for MLflow's search filter syntax."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Registry:
    """One environment's registry for one registered model."""

    def __init__(self, env: Environment, model_name: str, recreate: bool = False) -> None:
        """Open the environment's registry. A local one is created on first use; where the store
        already holds models a missing registry is an error (its history would be lost silently)
        unless `recreate` says it is meant (`mlrail recreate-registry`)."""
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # MLflow retries a failing server 7 times with doubling waits: minutes before a typo in
        # registry_uri surfaces. Fail within ~10 s instead, unless the environment says otherwise.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(HTTP_RETRIES))
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        _quiet_mlflow()
        from mlflow import MlflowClient

        self.env = env
        self.model_name = model_name
        self.uri = env.registry_uri
        self.calls: list[tuple[str, float]] = []  # (operation, seconds): for timing reports
        if self.uri.startswith("sqlite:///"):
            database = Path(self.uri[len("sqlite:///") :])
            if not database.is_file():
                if not recreate:
                    self._refuse_silent_recreation(database)
                self._create_sqlite(database)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def _refuse_silent_recreation(self, database: Path) -> None:
        """A registry is created empty only once: a registry that existed (its marker says so) and is
        gone while the store still holds models is lost history, not a fresh environment. (A fresh
        environment may store its first model a moment before it opens its registry.)"""
        if database.exists():
            raise RegistryError(
                f"the {self.env.name} registry {database} is not a file; move it away (expected the SQLite database)"
            )
        if not _created_marker(database).exists():
            return
        try:
            stored = ArtifactStore(self.env).digests()
        except ArtifactError:
            return
        if stored:
            raise RegistryError(
                f"the {self.env.name} registry {database} is missing but the {self.env.name} store "
                f"{self.env.artifact_root} holds {len(stored)} model(s): restore the registry file from a backup, "
                f"or create an empty one on purpose with `mlrail recreate-registry --env {self.env.name}` "
                "(its versions, aliases and lineage are lost)"
            )

    def _create_sqlite(self, database: Path) -> None:
        """Create the environment's registry database, atomically, with MLflow's own artifact
        location inside the environment's store (MLflow would default to ./mlruns of the
        working directory, shared by every environment)."""
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        def no_sync(connection, _record) -> None:
            # ~300 DDL statements, each a transaction: without an fsync each they run 3-4x
            # faster. Safe: the file is built under a temp name, fsynced once, then linked.
            cursor = connection.cursor()
            cursor.execute("PRAGMA synchronous=OFF")
            cursor.execute("PRAGMA journal_mode=MEMORY")
            cursor.close()

        started = time.perf_counter()
        database.parent.mkdir(parents=True, exist_ok=True)
        artifacts = Path(self.env.artifact_root) / "mlflow"
        partial = database.with_name(f".{database.name}.{os.getpid()}.partial")
        partial.unlink(missing_ok=True)
        event.listen(Engine, "connect", no_sync)
        try:
            store = SqlAlchemyStore(f"sqlite:///{partial}", artifacts.as_uri())
            store.engine.dispose()
            with open(partial, "rb") as handle:
                os.fsync(handle.fileno())
            with contextlib.suppress(FileExistsError):  # never replace a registry another process just made
                os.link(partial, database)
            _created_marker(database).touch()
        finally:
            event.remove(Engine, "connect", no_sync)
            partial.unlink(missing_ok=True)
        self.calls.append(("create_registry", time.perf_counter() - started))

    # --- reading ------------------------------------------------------------------------

    def find_by_digest(self, digest: str) -> ModelVersion | None:
        """The version holding this content digest (the lowest, should a race have made two)."""
        digest_hex(digest)  # validates the form
        found = self._call(
            "search_model_versions",
            f"name = {_quote(self.model_name)} and tags.{TAG_DIGEST} = {_quote(digest)}",
        )
        if not found:
            return None
        first = min(found, key=lambda mv: int(mv.version))
        return self.get(str(first.version))  # search results omit aliases; get() includes them

    def get(self, version: str) -> ModelVersion:
        version = str(version)
        if not version.isdigit():
            raise RegistryError(f"model version {version!r} is not a version number")
        return self._convert(self._call("get_model_version", self.model_name, version))

    def find(self, version: str) -> ModelVersion | None:
        """The version, or None when the registry has no such version (other failures raise)."""
        from mlflow.exceptions import MlflowException

        version = str(version)
        if not version.isdigit():
            raise RegistryError(f"model version {version!r} is not a version number")
        try:
            return self._convert(self._timed("get_model_version", self.model_name, version))
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
                return None
            raise self._error("get_model_version", exc) from None

    def versions(self) -> list[ModelVersion]:
        """Every version of the model, oldest first; [] before the first registration."""
        found = self._call("search_model_versions", f"name = {_quote(self.model_name)}")
        aliases = self._aliases_by_version()
        return sorted(
            (self._convert(mv, aliases.get(str(mv.version), ())) for mv in found), key=lambda mv: int(mv.version)
        )

    def alias(self, alias: str) -> ModelVersion | None:
        """The version an alias (champion, challenger) points at, or None."""
        self._check_alias(alias)
        from mlflow.exceptions import MlflowException

        try:
            mv = self._timed("get_model_version_by_alias", self.model_name, alias)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
                return None
            raise self._error("get_model_version_by_alias", exc) from None
        return self._convert(mv)

    def exists(self) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            self._timed("get_registered_model", self.model_name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return False
            raise self._error("get_registered_model", exc) from None
        return True

    # --- writing ------------------------------------------------------------------------

    def register(self, stored: StoredModel, lineage: dict[str, str]) -> ModelVersion:
        """Register a stored model with its lineage; an existing version with that digest is returned.

        Tags of an existing version are merged: missing keys are added, recorded values are kept
        (the first registration's lineage is the model's provenance).
        """
        digest_hex(stored.digest)
        tags = {str(key): str(value) for key, value in lineage.items()}
        if tags.get(TAG_DIGEST, stored.digest) != stored.digest:
            raise RegistryError(
                f"lineage digest {tags[TAG_DIGEST]} differs from the stored model's digest {stored.digest}"
            )
        tags[TAG_DIGEST] = stored.digest
        tags[TAG_STORAGE_URI] = stored.uri
        signature = self._verify_in_own_store(stored)
        if signature is not None:
            tags[TAG_SIGNATURE_INPUTS] = signature.inputs
            if signature.outputs:
                tags[TAG_SIGNATURE_OUTPUTS] = signature.outputs
        existing = self.find_by_digest(stored.digest)
        if existing is not None:
            missing = {key: value for key, value in tags.items() if key not in existing.tags}
            if missing:
                self.set_tags(existing.version, missing)
                existing = self.get(existing.version)
            return existing
        self._ensure_registered_model()
        mv = self._create_version(stored, tags)
        return self._settle(mv)

    def set_tags(self, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self._call(
                "set_model_version_tag",
                self.model_name,
                str(version),
                key,
                str(value),
            )

    def set_alias(self, alias: str, version: str) -> None:
        self._check_alias(alias)
        self.get(version)  # a clear error for a version that does not exist
        self._call("set_registered_model_alias", self.model_name, alias, str(version))

    def delete_alias(self, alias: str) -> None:
        self._check_alias(alias)
        if self.alias(alias) is not None:
            self._call("delete_registered_model_alias", self.model_name, alias)

    # --- internals ----------------------------------------------------------------------

    def _verify_in_own_store(self, stored: StoredModel) -> Signature | None:
        """A version only ever names an MLflow model present, with its digest, in this environment's
        store; returns its signature (None for a store this build cannot read)."""
        try:
            store = ArtifactStore(self.env)
        except ArtifactError:
            return None  # an object store this build cannot read (cluster): its pipeline wrote and checked it
        store.verify(stored.uri, stored.digest)
        try:
            return check_model_dir(store.local_path(stored.uri))
        except ModelFormatError as exc:
            raise RegistryError(f"{self.env.name} registry: refusing to register {stored.uri}: {exc}") from None

    def _ensure_registered_model(self) -> None:
        from mlflow.exceptions import MlflowException

        if self.exists():
            return
        try:
            self._timed(
                "create_registered_model",
                self.model_name,
                tags={"environment": self.env.name},
                description=f"{self.model_name} in the {self.env.name} environment",
            )
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":  # a concurrent first registration won
                raise self._error("create_registered_model", exc) from None

    def _create_version(self, stored: StoredModel, tags: dict[str, str]):
        from mlflow.exceptions import MlflowException

        try:
            return self._timed("create_model_version", self.model_name, stored.uri, tags=tags)
        except MlflowException as exc:
            if _LOCAL_SOURCE_REFUSED not in str(exc):
                raise self._error("create_model_version", exc) from None
        # An MLflow server refuses a source on its own disk unless it lies in a run's artifact
        # folder. Record the model in a registration run (its artifacts go to the server's
        # artifact location for this environment) and register that copy; the storage_uri tag
        # still names the content-addressed original. In a cluster the store is s3:// or gs://
        # and the first call succeeds.
        return self._create_version_through_run(stored, tags)

    def _create_version_through_run(self, stored: StoredModel, tags: dict[str, str]):
        local = file_uri_path(stored.uri)
        if local is None:
            raise RegistryError(f"{self.env.name} registry refused model source {stored.uri}")
        if directory_digest(local) != stored.digest:
            raise RegistryError(f"{self.env.name}: {stored.uri} does not hold digest {stored.digest}")
        experiment = self._registration_experiment()
        run = self._call(
            "create_run",
            experiment,
            tags={TAG_DIGEST: stored.digest, "mlflow.runName": f"register-{stored.digest[7:19]}"},
        )
        self._call("log_artifacts", run.info.run_id, str(local), "model")
        self._call("update_run", run.info.run_id, status="FINISHED")  # set_terminated prints URLs to stdout
        source = f"{run.info.artifact_uri.rstrip('/')}/model"
        return self._call(
            "create_model_version",
            self.model_name,
            source,
            run_id=run.info.run_id,
            tags=tags,
        )

    def _registration_experiment(self) -> str:
        name = f"{self.model_name}-registrations"
        experiment = self._call("get_experiment_by_name", name)
        if experiment is not None:
            return experiment.experiment_id
        return self._call("create_experiment", name)

    def _settle(self, mv) -> ModelVersion:
        """Converge after a concurrent registration of the same digest: keep the lowest version."""
        same = self._call(
            "search_model_versions",
            f"name = {_quote(self.model_name)} and tags.{TAG_DIGEST} = {_quote(mv.tags[TAG_DIGEST])}",
        )
        keep = str(min(int(found.version) for found in same)) if same else str(mv.version)
        if keep != str(mv.version):
            self._call("delete_model_version", self.model_name, str(mv.version))
        return self.get(keep)

    def _aliases_by_version(self) -> dict[str, tuple[str, ...]]:
        if not self.exists():
            return {}
        model = self._call("get_registered_model", self.model_name)
        by_version: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            by_version.setdefault(str(version), []).append(alias)
        return {version: tuple(sorted(names)) for version, names in by_version.items()}

    def _convert(self, mv, aliases: tuple[str, ...] | None = None) -> ModelVersion:
        tags = dict(mv.tags or {})
        return ModelVersion(
            name=mv.name,
            version=str(mv.version),
            source=tags.get(TAG_STORAGE_URI, mv.source),
            digest=tags.get(TAG_DIGEST, ""),
            tags=tags,
            aliases=tuple(sorted(mv.aliases or ())) if aliases is None else aliases,
        )

    def _check_alias(self, alias: str) -> None:
        if not isinstance(alias, str) or not _ALIAS.match(alias) or re.match(r"^v\d+$", alias):
            raise RegistryError(f"alias {alias!r} is not valid: expected a name like champion or challenger")

    def _timed(self, operation: str, *args, **kwargs):
        """Call MlflowClient.<operation>, recording how long it took."""
        from sqlalchemy.exc import OperationalError

        started = time.perf_counter()
        try:
            return getattr(self.client, operation)(*args, **kwargs)
        except OperationalError as exc:  # SQLite: locked by another process, read-only, not a database
            reason = str(exc.orig) if exc.orig is not None else type(exc).__name__
            raise RegistryError(
                f"the {self.env.name} registry {self.uri} cannot be used ({operation}: {reason}); "
                "if another mlrail command holds it, rerun when that one has finished"
            ) from None
        finally:
            self.calls.append((operation, time.perf_counter() - started))

    def _call(self, operation: str, *args, **kwargs):
        """_timed, turning an MlflowException into a RegistryError naming the environment."""
        from mlflow.exceptions import MlflowException

        try:
            return self._timed(operation, *args, **kwargs)
        except MlflowException as exc:
            raise self._error(operation, exc) from None

    def _error(self, operation: str, exc: Exception) -> RegistryError:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "Max retries exceeded" in message or "Connection refused" in message:
            return RegistryError(
                f"the {self.env.name} registry {self.uri} is unreachable ({operation} failed after retries); "
                "check its registry_uri in config/environments.yaml and that the server is up"
            )
        return RegistryError(f"{self.env.name} registry ({self.uri}): {operation} for {self.model_name}: {message}")
