"""Your pipelines: they compile reproducibly into steps that install nothing at run time, the
parameters in config/environments.yaml are ones they declare, and one local run of both
pipelines yields what the engine registers (an MLflow model directory and its metrics)."""

from pathlib import Path

import pytest
import yaml
from mlrail import config, runner
from mlrail.compile import compile_all, pipeline_version
from mlrail.config import ENVIRONMENTS
from mlrail.pipelines import resolve_parameters

from conftest import ROOT

CFG = config.load(ROOT)


def test_pipelines_compile_reproducibly(tmp_path):
    pipelines = CFG.load_pipelines()
    first = compile_all(pipelines, tmp_path / "a")
    second = compile_all(pipelines, tmp_path / "b")
    assert {"features", "training"} <= set(first)
    for name, path in first.items():
        assert pipeline_version(path) == pipeline_version(second[name])
        spec = yaml.safe_load(path.read_text())
        for executor in spec["deploymentSpec"]["executors"].values():
            container = executor.get("container")
            if container:  # steps run in the project image: nothing is pip-installed when one starts
                assert "pip install" not in " ".join(container["command"])
                assert not container["image"].endswith(":latest")


@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize("pipeline", ["features", "training"])
def test_configured_parameters_are_declared_by_the_pipeline(env, pipeline):
    func = CFG.load_pipelines()[pipeline]
    resolve_parameters(func, CFG.parameters(pipeline, env), pipeline=pipeline)  # raises naming a stray key


def test_both_pipelines_run_locally(project_copy):
    cfg = config.load(project_copy)
    env, pipelines = cfg.env("sandbox"), cfg.load_pipelines()
    features = runner.run_features(env, pipelines, cfg.parameters("features", "sandbox"))
    assert features.snapshot.startswith("sha256:")
    trained = runner.run_training(env, pipelines, features.features_uri, cfg.parameters("training", "sandbox"))
    assert trained.snapshot == features.snapshot
    model_dir = Path(trained.model_uri.removeprefix("file://"))
    assert (model_dir / "MLmodel").is_file(), f"{model_dir} is not an MLflow model directory"
    assert str(env.local_dir) in trained.model_uri  # runs stay inside the environment
    gates = {name.removeprefix("min_"): bound for name, bound in env.gates.items() if name.startswith("min_")}
    assert gates and all(trained.metrics[metric] >= bound for metric, bound in gates.items()), trained.metrics
