import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture()
def project_copy(tmp_path, monkeypatch):
    """A throwaway copy of the repository's config and deploy tree, with its own .mlops."""
    import shutil

    for folder in ("config", "deploy"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLOPS_BACKEND", "local")
    return tmp_path
