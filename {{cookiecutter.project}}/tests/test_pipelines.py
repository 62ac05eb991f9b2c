import yaml

from {{ cookiecutter.package }} import config, runner
from {{ cookiecutter.package }}.pipelines.compile import compile_all, pipeline_version


def test_pipelines_compile_reproducibly(tmp_path):
    first = compile_all(tmp_path / "a")
    second = compile_all(tmp_path / "b")
    assert set(first) == {"features", "training"}
    for name in first:
        assert pipeline_version(first[name]) == pipeline_version(second[name])
        spec = yaml.safe_load(first[name].read_text())
        assert spec["sdkVersion"] == "kfp-2.17.3"
        for executor in spec["deploymentSpec"]["executors"].values():
            container = executor.get("container")
            if container:  # nothing is pip-installed when a step starts
                assert "pip install" not in " ".join(container["command"])
                assert not container["image"].endswith(":latest")
    assert not list((tmp_path / "a").glob(".*.partial.yaml"))


def test_training_pipeline_runs_locally(project_copy):
    env = config.load().env("sandbox")
    features = runner.run_features(env)
    assert features.rows == 569 and features.snapshot.startswith("sha256:")
    trained = runner.run_training(env, features.features_uri)
    assert trained.metrics["accuracy"] > 0.9
    assert trained.snapshot == features.snapshot
    assert str(env.local_dir) in trained.model_uri  # runs stay inside the environment
