"""The parameters contract: config and `--param` values are data for the pipeline function.

Any names and types the pipeline declares work; an unknown name is one line naming it and the
pipeline's parameters; values are cast to the declared annotations; the full set (defaults
included) is what a run records. Before this contract the engine hard-wired c/max_iter/seed
(issue 9, item 3): a pipeline taking n_estimators failed with "unexpected keyword argument c",
and retrain silently dropped every other parameter."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import pytest

from example import ROOT
from mlrail import config, pipelines, promotion, runner
from mlrail.pipelines import PipelineParameterError, cast_value, parse_assignments, resolve_parameters

TARGET = "churn_classifier.pipelines:training_pipeline"


def forest_pipeline(features_uri: str, n_estimators: int = 100, max_depth: int = 6, seed: int = 42):
    """A team's replacement model: other hyperparameters than the example's."""


def every_type(
    rate: float = 0.1,
    layers: int = 2,
    shuffle: bool = True,
    name: str = "m",
    columns: list = [],  # noqa: B006 - a pipeline signature, never mutated
    options: dict = {},  # noqa: B006
    limit: Optional[int] = None,  # noqa: UP045 - teams write either form
    width: int | None = None,
):
    pass


def forest(**functions):
    return pipelines.Pipelines({"training": forest_pipeline, **functions}, {"training": TARGET})


def test_an_unknown_parameter_names_itself_and_what_the_pipeline_takes():
    with pytest.raises(PipelineParameterError) as caught:
        runner.bind(forest(), "training", {"c": 1.0})
    assert str(caught.value) == (
        f"training.parameters.c is not a parameter of {TARGET}; it takes n_estimators, max_depth, seed"
    )
    with pytest.raises(PipelineParameterError, match=r"^--param c is not a parameter of "):
        runner.bind(forest(), "training", {"c": "1"}, {"c": "--param c"})
    # features_uri is the engine's own input, never a parameter a team sets
    with pytest.raises(PipelineParameterError, match="features_uri is not a parameter"):
        runner.bind(forest(), "training", {"features_uri": "/x"})


def test_any_names_work_and_defaults_are_filled_in():
    assert runner.bind(forest(), "training", {"n_estimators": 200}) == {
        "n_estimators": 200,
        "max_depth": 6,
        "seed": 42,
    }


def test_a_parameter_without_default_must_be_set():
    def needs(features_uri: str, depth: int):
        pass

    with pytest.raises(PipelineParameterError, match=r"requires the parameter depth \(int\), which has no default"):
        resolve_parameters(needs, {}, pipeline="training")
    assert resolve_parameters(needs, {"depth": "3"}, pipeline="training") == {"depth": 3}


@pytest.mark.parametrize(
    ("name", "text", "value"),
    [
        ("rate", "0.5", 0.5),
        ("rate", "1", 1.0),
        ("layers", "7", 7),
        ("shuffle", "false", False),
        ("shuffle", "Yes", True),
        ("name", "forest", "forest"),
        ("name", "42", "42"),
        ("columns", '["age", "tenure"]', ["age", "tenure"]),
        ("options", '{"criterion": "gini"}', {"criterion": "gini"}),
        ("limit", "none", None),
        ("limit", "5", 5),
        ("width", "8", 8),
    ],
)
def test_command_line_strings_are_cast_to_the_declared_type(name, text, value):
    resolved = resolve_parameters(every_type, parse_assignments([f"{name}={text}"]), pipeline="training")
    assert resolved[name] == value and type(resolved[name]) is type(value)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("layers", "many", "an int"),
        ("layers", 2.5, "an int"),
        ("layers", True, "an int"),
        ("rate", "fast", "a float"),
        ("shuffle", "maybe", "a bool"),
        ("shuffle", 1, "a bool"),
        ("name", 3, "a str"),
        ("columns", "[1,", "a list written as JSON"),
        ("columns", '{"a": 1}', "a list"),
        ("options", "[1]", "a dict"),
    ],
)
def test_values_of_another_type_are_one_line_errors(name, value, expected):
    with pytest.raises(PipelineParameterError) as caught:
        resolve_parameters(every_type, {name: value}, pipeline="training", sources={name: f"--param {name}"})
    assert str(caught.value).startswith(f"--param {name} is {value!r}; expected {expected}")


def test_yaml_values_keep_their_types():
    assert cast_value(3, float, "x") == 3.0 and isinstance(cast_value(3, float, "x"), float)
    assert cast_value([1, 2], list[int], "x") == [1, 2]
    assert cast_value({"a": 1}, dict[str, int], "x") == {"a": 1}


def test_parse_assignments():
    assert parse_assignments(["n_estimators=200", "name=a=b", "empty="]) == {
        "n_estimators": "200",
        "name": "a=b",
        "empty": "",
    }
    for bad in ("n_estimators", "=3", "max-depth=4"):
        with pytest.raises(PipelineParameterError, match=r"is not of the form NAME=VALUE"):
            parse_assignments([bad])


def test_the_example_pipeline_declares_its_parameters():
    loaded = pipelines.load(ROOT, {"features": "churn_classifier.pipelines:feature_pipeline", "training": TARGET})
    assert loaded.target("training") == TARGET
    assert runner.bind(loaded, "training", {"c": "0.5"}) == {"c": 0.5, "max_iter": 1000, "seed": 42}
    assert runner.bind(loaded, "features", {}) == {"test_fraction": 0.2, "seed": 42}
    with pytest.raises(PipelineParameterError, match=f"n_estimators is not a parameter of {TARGET}; it takes c, "):
        runner.bind(loaded, "training", {"n_estimators": 3})


def write_override(root: Path, env: str, text: str) -> None:
    path = root / "config" / "environments.yaml"
    content = path.read_text()
    start = content.index(f"\n  {env}:\n")
    cluster = content.index("    cluster:\n", start)
    path.write_text(content[:cluster] + text + content[cluster:])


def test_flow_parameters_come_from_config_overrides_and_the_command_line(project_copy):
    write_override(project_copy, "sandbox", "    parameters:\n      training: {max_iter: 50}\n")
    cfg = config.load()
    assert promotion._params(cfg, cfg.env("staging")) == {"c": 1.0, "max_iter": 1000, "seed": 42}
    assert promotion._params(cfg, cfg.env("sandbox")) == {"c": 1.0, "max_iter": 50, "seed": 42}
    assert promotion._params(cfg, cfg.env("sandbox"), {"c": "0.25", "seed": "7"}) == {
        "c": 0.25,
        "max_iter": 50,
        "seed": 7,
    }
    with pytest.raises(PipelineParameterError, match=r"^--param n_estimators is not a parameter of "):
        promotion._params(cfg, cfg.env("sandbox"), {"n_estimators": "3"})
    write_override(project_copy, "staging", "    parameters:\n      training: {depth: 3}\n")
    with pytest.raises(
        PipelineParameterError, match=r"^environments\.staging\.parameters\.training\.depth is not a parameter of"
    ):
        promotion._params(config.load(), config.load().env("staging"))


def test_retrain_forwards_every_promoted_parameter_and_ignores_config(project_copy):
    write_override(project_copy, "production", "    parameters:\n      training: {max_iter: 5}\n")
    cfg = config.load()
    promoted = {"c": 0.5, "max_iter": 1000, "seed": 3}
    where = "deploy/overlays/production/release.yaml"
    assert promotion._params(cfg, cfg.env("production"), promoted=promoted, where=where) == promoted
    with pytest.raises(PipelineParameterError, match=rf"^{where}: parameters\.gamma is not a parameter of"):
        promotion._params(cfg, cfg.env("production"), promoted={"gamma": 1}, where=where)


def test_parameter_tags_round_trip_with_their_types():
    params = {"c": 1.0, "max_iter": 1000, "name": "42", "columns": ["a", "b"], "shuffle": False}
    tags = {f"param.{k}": promotion._param_tag(v) for k, v in params.items()}
    assert promotion.params_from_tags({**tags, "git_commit": "abc"}) == params
    assert promotion.params_from_tags({"param.c": "0.5", "param.max_iter": "1000"}) == {"c": 0.5, "max_iter": 1000}


def test_a_run_receives_the_parameters_as_data_and_records_the_full_set(tmp_path, monkeypatch):
    """The runner calls the pipeline function with the bound parameters and nothing hard-wired."""
    calls = []
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"accuracy": 0.9}))

    def recording_pipeline(features_uri: str, n_estimators: int = 100, max_depth: int = 6, seed: int = 42):
        calls.append({"features_uri": features_uri, "n_estimators": n_estimators, "max_depth": max_depth})
        model = SimpleNamespace(uri=str(tmp_path / "model"))
        return SimpleNamespace(outputs={"model": model, "metrics": SimpleNamespace(uri=str(metrics))})

    monkeypatch.setenv("MLOPS_BACKEND", "local")
    shutil.copytree(ROOT / "config", tmp_path / "config")
    cfg = config.load(tmp_path)
    features = tmp_path / "features.csv"
    features.write_text("a,label\n1,0\n")
    loaded = pipelines.Pipelines({"training": recording_pipeline}, {"training": "fraud.pipelines:forest"})
    run = runner.run_training(cfg.env("sandbox"), loaded, str(features), {"n_estimators": "200"})
    assert calls == [{"features_uri": str(features), "n_estimators": 200, "max_depth": 6}]
    assert run.params == {"n_estimators": 200, "max_depth": 6, "seed": 42} and run.metrics == {"accuracy": 0.9}
    with pytest.raises(PipelineParameterError, match="^training.parameters.c is not a parameter of fraud.pipelines"):
        runner.run_training(cfg.env("sandbox"), loaded, str(features), {"c": 1.0})
    assert len(calls) == 1  # rejected before anything ran


def test_check_config_rejects_a_parameter_the_pipeline_does_not_take(project_copy, capsys):
    from mlrail import cli

    assert cli.main(["check-config"]) == 0
    assert "config/environments.yaml is valid: schema, the parameters of features" in capsys.readouterr().out
    write_override(project_copy, "staging", "    parameters:\n      training: {n_estimators: 3}\n")
    assert cli.main(["check-config"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: config/environments.yaml: environments.staging.parameters.training.n_estimators is not a parameter "
        f"of {TARGET}; it takes c, max_iter, seed"
    ]
    assert cli.main(["check-config", "--schema-only"]) == 0
