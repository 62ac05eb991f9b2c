import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(autouse=True)
def _own_local_state(monkeypatch):
    """`make ci` (act) points MLOPS_LOCAL_ROOT at the repository's .mlops for the workflow's
    steps; the unit tests the workflow runs must keep to their own temporary state."""
    monkeypatch.delenv("MLOPS_LOCAL_ROOT", raising=False)


@pytest.fixture()
def project_copy(tmp_path, monkeypatch):
    """A throwaway copy of the repository's config and deploy tree, with its own .mlops."""
    import shutil

    for folder in ("config", "deploy"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLOPS_BACKEND", "local")
    return tmp_path
