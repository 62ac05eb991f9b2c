"""The registry against both forms it takes: a SQLite file (local backend) and a real
`mlflow server` on 127.0.0.1 (the form a cluster uses), with the same tests. The server starts
once per module (pytest runs with --dist loadscope) and is always stopped."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from mlrail import config
from mlrail.artifacts import ArtifactError, ArtifactStore, directory_digest
from mlrail.config import ClusterSettings, Environment
from mlrail.registry import (
    ALIAS_CHALLENGER,
    ALIAS_CHAMPION,
    TAG_DIGEST,
    TAG_GIT_COMMIT,
    TAG_SIGNATURE_OUTPUTS,
    TAG_SOURCE_VERSION,
    TAG_STORAGE_URI,
    Registry,
    RegistryError,
    lineage_tags,
)

SERVER_START_TIMEOUT = 120
# MLflow's own SQLAlchemy models use a loader strategy SQLAlchemy 2 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def blank_registry(tmp_path_factory):
    """A freshly created SQLite registry, copied into each test: creating one runs MLflow's ~100
    schema migrations (about a second), which test_a_new_sqlite_registry... covers once."""
    root = tmp_path_factory.mktemp("blank-registry")
    env = _server_env("staging", "unused", root)
    env = Environment(**{**env.__dict__, "backend": "local"})
    Registry(env, "unused")
    return env.local_dir / "registry.db"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory, blank_registry):
    """A real `mlflow server` with its own SQLite store and artifact folder, always stopped."""
    root = tmp_path_factory.mktemp("mlflow-server")
    shutil.copyfile(blank_registry, root / "mlflow.db")  # already migrated: the server starts sooner
    port = _free_port()
    executable = Path(sys.executable).parent / "mlflow"
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log = open(root / "server.log", "wb")  # noqa: SIM115 - closed in the teardown
    process = subprocess.Popen(
        [
            str(executable),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--default-artifact-root",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            assert process.poll() is None, (root / "server.log").read_text()[-2000:]
            try:
                if requests.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.2)
        yield url, root
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def _server_env(name: str, url: str, tmp_path: Path) -> Environment:
    return Environment(
        name=name,
        namespace=f"churn-classifier-{name}",
        backend="cluster",
        serving=True,
        cluster=ClusterSettings(
            kfp_endpoint="http://127.0.0.1:1",
            registry_uri=url,
            artifact_root=str(tmp_path / f"{name}-bucket"),
            endpoint_url="http://127.0.0.1:1",
        ),
        gates={},
        auto_merge=False,
        local_dir=tmp_path / ".mlops" / name,
    )


@pytest.fixture(params=["sqlite", "server"])
def envs(request, project_copy):
    """(staging, production) environments whose registries are SQLite files or one mlflow server."""
    if request.param == "sqlite":
        cfg = config.load()
        for env in (cfg.env("staging"), cfg.env("production")):
            env.local_dir.mkdir(parents=True)
            shutil.copyfile(request.getfixturevalue("blank_registry"), env.local_dir / "registry.db")
        return cfg.env("staging"), cfg.env("production")
    url, _ = request.getfixturevalue("mlflow_server")
    return _server_env("staging", url, project_copy), _server_env("production", url, project_copy)


@pytest.fixture()
def model_name(envs):
    # Tests share the server: each registers its own model.
    return f"churn-{uuid.uuid4().hex[:8]}"


# The MLmodel of an MLflow model with a signature and an input example, as MLflow writes it.
MLMODEL = """\
flavors:
  python_function:
    loader_module: mlflow.sklearn
    model_path: model.pkl
saved_input_example_info:
  artifact_path: input_example.json
  pandas_orient: split
  type: dataframe
signature:
  inputs: '[{"type": "double", "name": "tenure", "required": true}, {"type": "long", "name": "plan", "required": true}]'
  outputs: '[{"type": "tensor", "tensor-spec": {"dtype": "int64", "shape": [-1]}}]'
"""


def _stored(env, tmp_path: Path, content: bytes, mlmodel: str | None = MLMODEL):
    folder = tmp_path / f"model-{uuid.uuid4().hex[:6]}"
    folder.mkdir()
    (folder / "model.pkl").write_bytes(content)
    (folder / "input_example.json").write_text('{"columns": ["tenure", "plan"], "data": [[1.5, 2]]}')
    if mlmodel is not None:
        (folder / "MLmodel").write_text(mlmodel)
    return ArtifactStore(env).put(folder)


def test_a_version_records_the_models_signature(envs, model_name, tmp_path):
    staging, _ = envs
    version = Registry(staging, model_name).register(_stored(staging, tmp_path, b"model-s"), {})
    assert version.inputs == "tenure: double, plan: long"
    assert version.signature.input_names() == ["tenure", "plan"]
    assert '"int64"' in version.tags[TAG_SIGNATURE_OUTPUTS] and version.to_dict()["inputs"] == version.inputs
    assert Registry(staging, model_name).versions()[0].inputs == version.inputs


def test_a_directory_that_is_not_an_mlflow_model_with_a_signature_is_refused(envs, model_name, tmp_path):
    staging, _ = envs
    registry = Registry(staging, model_name)
    with pytest.raises(RegistryError, match="refusing to register .* holds no MLmodel: the model must be an MLflow"):
        registry.register(_stored(staging, tmp_path, b"plain", mlmodel=None), {})
    unsigned = MLMODEL.split("signature:")[0]
    with pytest.raises(RegistryError, match=r"has no signature \(inputs\); save it with mlflow.<flavor>.save_model"):
        registry.register(_stored(staging, tmp_path, b"unsigned", mlmodel=unsigned), {})
    no_example = MLMODEL.replace("saved_input_example_info:", "other_info:")
    with pytest.raises(RegistryError, match="has no input example"):
        registry.register(_stored(staging, tmp_path, b"no-example", mlmodel=no_example), {})
    assert registry.versions() == []


def test_a_locked_sqlite_registry_is_one_clear_error(project_copy, blank_registry, monkeypatch):
    import sqlite3

    env = config.load().env("staging")
    env.local_dir.mkdir(parents=True)
    shutil.copyfile(blank_registry, env.local_dir / "registry.db")
    registry = Registry(env, "churn-classifier")
    holder = sqlite3.connect(env.local_dir / "registry.db", timeout=0)
    holder.execute("BEGIN EXCLUSIVE")  # another process in the middle of a write
    try:
        with pytest.raises(RegistryError, match=r"staging registry sqlite:///.* cannot be used .*database is locked"):
            registry.versions()
    finally:
        holder.rollback()
        holder.close()


def test_register_records_lineage_and_points_at_the_stored_model(envs, model_name, tmp_path):
    staging, _ = envs
    stored = _stored(staging, tmp_path, b"model-a")
    registry = Registry(staging, model_name)
    assert registry.versions() == [] and registry.alias(ALIAS_CHAMPION) is None
    lineage = lineage_tags(
        git_commit="0123abc",
        pipeline_version="sha256:" + "1" * 64,
        data_snapshot="sha256:" + "2" * 64,
        metrics={"accuracy": 0.95, "roc_auc": 0.991},
    )
    version = registry.register(stored, lineage)
    assert version.version == "1" and version.name == model_name
    assert version.digest == stored.digest and version.source == stored.uri
    assert version.tags[TAG_GIT_COMMIT] == "0123abc" and version.tags[TAG_STORAGE_URI] == stored.uri
    assert version.metrics == {"accuracy": 0.95, "roc_auc": 0.991}
    assert version.lineage[TAG_DIGEST] == stored.digest
    assert registry.get("1") == version and registry.find_by_digest(stored.digest) == version


def test_registration_is_idempotent_by_digest_and_merges_tags(envs, model_name, tmp_path):
    staging, _ = envs
    registry = Registry(staging, model_name)
    stored = _stored(staging, tmp_path, b"model-a")
    first = registry.register(stored, {TAG_GIT_COMMIT: "aaa"})
    again = registry.register(stored, {TAG_GIT_COMMIT: "bbb", "staging_evaluation": "passed"})
    assert again.version == first.version
    assert again.tags[TAG_GIT_COMMIT] == "aaa"  # the first registration's provenance is kept
    assert again.tags["staging_evaluation"] == "passed"  # new keys are added
    other = registry.register(_stored(staging, tmp_path, b"model-b"), {TAG_GIT_COMMIT: "ccc"})
    assert other.version == "2"
    assert [v.version for v in registry.versions()] == ["1", "2"]


def test_a_crash_inside_registration_converges_on_rerun(envs, model_name, tmp_path, monkeypatch):
    staging, _ = envs
    registry = Registry(staging, model_name)
    stored = _stored(staging, tmp_path, b"model-a")
    real = registry.client.create_model_version

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed after the registered model was created")

    monkeypatch.setattr(registry.client, "create_model_version", crash)
    with pytest.raises(KeyboardInterrupt):
        registry.register(stored, {})
    monkeypatch.setattr(registry.client, "create_model_version", real)
    assert registry.exists() and registry.versions() == []
    assert registry.register(stored, {}).version == "1"
    assert registry.register(stored, {}).version == "1"
    assert len(registry.versions()) == 1


def test_a_concurrent_duplicate_is_settled_to_the_lowest_version(envs, model_name, tmp_path, monkeypatch):
    staging, _ = envs
    registry = Registry(staging, model_name)
    stored = _stored(staging, tmp_path, b"model-a")
    winner = registry.register(stored, {})
    # The other writer's version was not visible yet when this one looked.
    monkeypatch.setattr(registry, "find_by_digest", lambda digest: None)
    assert registry.register(stored, {}).version == winner.version
    assert [v.version for v in registry.versions()] == [winner.version]


def test_aliases_mark_champion_and_challenger(envs, model_name, tmp_path):
    staging, _ = envs
    registry = Registry(staging, model_name)
    one = registry.register(_stored(staging, tmp_path, b"model-a"), {})
    two = registry.register(_stored(staging, tmp_path, b"model-b"), {})
    registry.set_alias(ALIAS_CHAMPION, one.version)
    registry.set_alias(ALIAS_CHALLENGER, two.version)
    assert registry.alias(ALIAS_CHAMPION).version == "1" and registry.alias(ALIAS_CHALLENGER).version == "2"
    registry.set_alias(ALIAS_CHAMPION, two.version)  # promotion moves the alias
    assert registry.alias(ALIAS_CHAMPION).aliases == (ALIAS_CHALLENGER, ALIAS_CHAMPION)
    assert [v.aliases for v in registry.versions()] == [(), (ALIAS_CHALLENGER, ALIAS_CHAMPION)]
    registry.delete_alias(ALIAS_CHALLENGER)
    assert registry.alias(ALIAS_CHALLENGER) is None
    with pytest.raises(RegistryError, match=f"{staging.name} registry"):
        registry.set_alias(ALIAS_CHAMPION, "7")
    with pytest.raises(RegistryError, match="alias 'v2' is not valid"):
        registry.set_alias("v2", "1")


def test_environments_have_separate_registries_and_copies_record_their_source(envs, model_name, tmp_path):
    staging, production = envs
    stored = _stored(staging, tmp_path, b"model-a")
    candidate = Registry(staging, model_name).register(stored, lineage_tags(git_commit="abc"))
    prod_registry = Registry(production, model_name)
    if staging.registry_uri != production.registry_uri:
        assert prod_registry.versions() == []
    copied = ArtifactStore(production).copy_from(ArtifactStore(staging), stored.uri, stored.digest)
    lineage = {**candidate.lineage, **lineage_tags(source_env="staging", source_registry=staging.registry_uri)}
    lineage[TAG_SOURCE_VERSION] = candidate.version
    version = Registry(production, model_name + "-prod").register(copied, lineage)
    assert version.source == copied.uri and version.tags[TAG_SOURCE_VERSION] == candidate.version
    assert version.tags["source_env"] == "staging" and version.tags[TAG_GIT_COMMIT] == "abc"


def test_bad_input_is_a_clear_registry_error(envs, model_name, tmp_path):
    staging, production = envs
    registry = Registry(staging, model_name)
    stored = _stored(staging, tmp_path, b"model-a")
    with pytest.raises(RegistryError, match="differs from the stored model's digest"):
        registry.register(stored, {TAG_DIGEST: "sha256:" + "f" * 64})
    with pytest.raises(RegistryError, match="not found|does not exist"):
        registry.get("3")
    with pytest.raises(RegistryError, match="is not a version number"):
        registry.get("latest")
    with pytest.raises(ArtifactError, match=f"is not in the {staging.name} store"):  # environments stay apart
        registry.register(_stored(production, tmp_path, b"model-p"), {})
    assert registry.versions() == []
    assert registry.find_by_digest("sha256:" + "e" * 64) is None


def test_a_server_registry_keeps_a_verified_copy_of_a_local_model(mlflow_server, project_copy):
    """`mlflow server` refuses sources on its own disk outside a run's artifacts: the model is
    recorded in a registration run, and the version still names the content-addressed original."""
    url, root = mlflow_server
    env = _server_env("staging", url, project_copy)
    stored = _stored(env, project_copy, b"model-served")
    registry = Registry(env, f"churn-{uuid.uuid4().hex[:8]}")
    version = registry.register(stored, {})
    assert version.source == stored.uri
    raw = registry.client.get_model_version(version.name, version.version)
    assert raw.run_id and raw.source.startswith(str(root / "artifacts"))
    copy = Path(raw.source.removeprefix("file://"))
    assert directory_digest(copy) == stored.digest
    shutil.rmtree(project_copy / "staging-bucket")  # the registry copy stands on its own
    assert directory_digest(copy) == stored.digest


def test_a_new_sqlite_registry_is_created_atomically_inside_its_environment(project_copy):
    env = config.load().env("sandbox")
    registry = Registry(env, "churn-classifier")
    assert ("create_registry" in dict(registry.calls)) and registry.versions() == []
    # no partial file left; the marker says a registry existed here (its loss is then an error)
    assert sorted(p.name for p in env.local_dir.iterdir()) == ["registry.db", "registry.db.created"]
    (experiment,) = registry.client.search_experiments()
    assert experiment.artifact_location.startswith((project_copy / ".mlops" / "sandbox" / "artifacts").as_uri())
    assert not (project_copy / "mlruns").exists()
    again = Registry(env, "churn-classifier")  # opening an existing registry creates nothing
    assert "create_registry" not in dict(again.calls)


def test_an_unreachable_server_is_one_clear_error(project_copy, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the default (3, ~10 s) is for real outages
    env = _server_env("production", f"http://127.0.0.1:{_free_port()}", project_copy)
    with pytest.raises(RegistryError, match="production registry http://127.0.0.1:.* is unreachable"):
        Registry(env, "churn-classifier").versions()
