import pytest

from mlrail import config


def test_environments_are_separated(project_copy):
    cfg = config.load()
    envs = [cfg.env(name) for name in config.ENVIRONMENTS]
    assert len({e.namespace for e in envs}) == 3
    assert len({e.registry_uri for e in envs}) == 3
    assert len({e.artifact_root for e in envs}) == 3
    assert len({e.cluster.registry_uri for e in envs}) == 3


def test_backend_override(project_copy, monkeypatch):
    monkeypatch.setenv(config.BACKEND_OVERRIDE_VAR, "cluster")
    cfg = config.load()
    assert cfg.env("production").registry_uri.startswith("http")
    monkeypatch.setenv(config.BACKEND_OVERRIDE_VAR, "moon")
    with pytest.raises(config.ConfigError, match="MLOPS_BACKEND"):
        config.load()


def test_bad_gate_names_the_key(project_copy):
    path = project_copy / "config" / "environments.yaml"
    path.write_text(path.read_text().replace("min_accuracy: 0.90", "min_accuracy: high", 1))
    with pytest.raises(config.ConfigError, match=r"staging\.gates\.min_accuracy"):
        config.load()


def test_unknown_environment(project_copy):
    with pytest.raises(config.ConfigError, match="unknown environment"):
        config.load().env("qa")
