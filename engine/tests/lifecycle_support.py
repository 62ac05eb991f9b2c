"""Shared by the lifecycle tests: a committed git repository of the project's config and
overlays with its own .mlops, and helpers to read what the flows left behind."""

import re
import shutil
import sqlite3
import subprocess
from dataclasses import replace

import pytest

from example import ROOT
from mlrail import config, promotion, serving
from mlrail.registry import Registry
from mlrail.release import Release, write_release

PRODUCTION_RELEASE = "deploy/overlays/production/release.yaml"
STAGING_RELEASE = "deploy/overlays/staging/release.yaml"


@pytest.fixture(scope="session")
def blank_registry_db(tmp_path_factory):
    """A migrated, empty SQLite registry: creating one runs MLflow's schema migrations (seconds
    on a busy machine), so each environment of a test repository starts from a copy."""
    cfg = config.load(ROOT)
    env = replace(cfg.env("staging"), backend="local", local_dir=tmp_path_factory.mktemp("blank-registry"))
    Registry(env, cfg.model_name).exists()
    return env.local_dir / "registry.db"


def seed_registry(db, target):
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(db, target)
    with sqlite3.connect(target) as connection:  # the default experiment's folder: beside this copy
        connection.execute(
            "UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0", (str(target.parent / "mlruns/0"),)
        )
    target.with_name(target.name + ".created").touch()  # as Registry does when it creates one


@pytest.fixture()
def lifecycle(tmp_path, monkeypatch, blank_registry_db):
    """`lifecycle(pattern)`: a fresh repository using that promotion pattern; endpoints always stopped."""
    made = []

    def make(pattern: str) -> config.Config:
        root = tmp_path / pattern
        for folder in ("config", "deploy"):
            shutil.copytree(ROOT / folder, root / folder)
        path = root / "config" / "environments.yaml"
        path.write_text(re.sub(r"(?m)^promotion: \w+", f"promotion: {pattern}", path.read_text()))
        # Start from declared-but-empty overlays, whatever this checkout has promoted so far.
        example = config.load(ROOT)
        for env in config.ENVIRONMENTS:
            write_release(root / "deploy/overlays" / env, Release.unreleased(example.model_name, example.image))
        (root / ".gitignore").write_text(".mlops/\nbuild/\n")
        for argv in (
            ["init", "--quiet", "--initial-branch=main"],
            ["add", "--all"],
            ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "initial"],
        ):
            subprocess.run(["git", *argv], cwd=root, check=True, capture_output=True)
        monkeypatch.chdir(root)
        for var in (promotion.FAULT_VAR, "MLOPS_LOCAL_ROOT"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("MLOPS_BACKEND", "local")
        cfg = config.load(root)
        for env in cfg.environments.values():
            seed_registry(blank_registry_db, env.local_dir / "registry.db")
        made.append(cfg)
        return cfg

    yield make
    for cfg in made:
        serving.stop_all(cfg)


def versions(cfg, env):
    return Registry(cfg.env(env), cfg.model_name).versions()


def served_digest(cfg, env):
    status = serving.endpoint(cfg, env).status()
    return status.digest if status else None


def crash_after_each(monkeypatch, flow, steps, run):
    """Inject a crash after each step in turn; every rerun resumes and crashes one step further."""
    for step in steps:
        monkeypatch.setenv(promotion.FAULT_VAR, f"{flow}:{step}")
        with pytest.raises(promotion.InjectedFault, match=f"after {flow} step '{step}'"):
            run()
    monkeypatch.delenv(promotion.FAULT_VAR)
    return run()
