import os

import pytest

from example import ROOT

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# `make ci` (act) points MLOPS_LOCAL_ROOT at the repository's .mlops for a workflow's steps; the
# unit tests such a workflow runs keep to their own temporary state (session fixtures included).
os.environ.pop("MLOPS_LOCAL_ROOT", None)


@pytest.fixture()
def project_copy(tmp_path, monkeypatch):
    """A throwaway copy of the repository's config and deploy tree, with its own .mlops."""
    import shutil

    for folder in ("config", "deploy"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLOPS_BACKEND", "local")
    return tmp_path


@pytest.fixture()
def no_proxy(monkeypatch):
    """Every server of the cluster simulation is on 127.0.0.1: never through a proxy."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
