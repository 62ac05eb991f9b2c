import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# `make ci` (act) points MLOPS_LOCAL_ROOT at the repository's .mlops for a workflow's steps; the
# tests keep to their own temporary state, whatever a local lifecycle left in .mlops.
os.environ.pop("MLOPS_LOCAL_ROOT", None)


@pytest.fixture()
def project_copy(tmp_path, monkeypatch):
    """A throwaway copy of the repository's config and deploy tree, with its own .mlops."""
    for folder in ("config", "deploy"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLOPS_BACKEND", "local")
    return tmp_path
