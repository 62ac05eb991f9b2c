"""config/environments.yaml: a strict schema, and every mistake one line naming file, line and key.

Each bad input below was accepted or gave a traceback before the schema (issue 11, finding 2):
a misspelled `gate:` turned every gate off, quoted booleans loaded as true, unknown keys were
ignored, `environments:` as a list raised a TypeError and malformed YAML gave no line number."""

import json
import re

import pytest

from example import ROOT
from mlrail import config

TEXT = (ROOT / "config" / "environments.yaml").read_text()
FILE = "config/environments.yaml"


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the n-th line containing `needle`."""
    hits = [number for number, line in enumerate(text.splitlines(), 1) if needle in line]
    return hits[occurrence - 1]


def problem(text: str) -> str:
    with pytest.raises(config.ConfigError) as caught:
        config.validate_text(text)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def replace_in(section: str, old: str, new: str, text: str = TEXT) -> str:
    """Replace `old` by `new` inside one environment's block only."""
    start = text.index(f"\n  {section}:\n")
    end = text.find("\n  production:\n", start + 1) if section != "production" else len(text)
    end = len(text) if end == -1 else end
    block = text[start:end]
    assert old in block, f"{old!r} not in {section}"
    return text[:start] + block.replace(old, new, 1) + text[end:]


def test_the_template_config_is_valid_and_complete():
    model = config.validate_text(TEXT)
    assert model.image == "ghcr.io/my-org/churn-classifier"
    assert model.training.parameters == {"c": 1.0, "max_iter": 1000, "seed": 42}
    assert model.timeouts.run_s == 3600


def test_environments_are_separated(project_copy):
    cfg = config.load()
    envs = [cfg.env(name) for name in config.ENVIRONMENTS]
    assert len({e.namespace for e in envs}) == 3
    assert len({e.registry_uri for e in envs}) == 3
    assert len({e.artifact_root for e in envs}) == 3
    assert len({e.cluster.registry_uri for e in envs}) == 3
    assert cfg.env("staging").timeouts is cfg.timeouts and cfg.image


def test_backend_override(project_copy, monkeypatch):
    monkeypatch.setenv(config.BACKEND_OVERRIDE_VAR, "cluster")
    cfg = config.load()
    assert cfg.env("production").registry_uri.startswith("http")
    monkeypatch.setenv(config.BACKEND_OVERRIDE_VAR, "moon")
    with pytest.raises(config.ConfigError, match="MLOPS_BACKEND"):
        config.load()


def test_local_root_override(project_copy, monkeypatch, tmp_path):
    monkeypatch.setenv(config.LOCAL_ROOT_VAR, str(tmp_path / "state"))
    assert config.load().env("staging").local_dir == tmp_path / "state" / "staging"


def test_misspelled_gates_key_is_rejected_naming_the_key_and_the_allowed_keys():
    text = replace_in("staging", "    gates:", "    gate:")
    message = problem(text)
    line = line_of(text, "    gate:")
    assert message.startswith(f"{FILE}:{line}: environments.staging.gate: unknown key; expected one of namespace, ")
    assert "gates" in message


@pytest.mark.parametrize("key", ["auto_merge", "serving"])
def test_quoted_booleans_are_errors_not_true(key):
    env = "production"
    text = replace_in(env, f"{key}: ", f'{key}: "false" #', TEXT)
    message = problem(text)
    line = line_of(text, f'{key}: "false"')
    assert message == (
        f"{FILE}:{line}: environments.{env}.{key}: "
        "is the string 'false' (quoted: remove the quotes); expected true or false"
    )


def test_environments_as_a_list():
    head = TEXT[: TEXT.index("environments:\n")]
    text = head + "environments:\n  - sandbox\n  - staging\n  - production\n"
    assert problem(text) == (
        f"{FILE}:{line_of(text, 'environments:')}: environments: is a list; "
        "expected a mapping of sandbox, staging and production"
    )


def test_an_unknown_environment_and_a_missing_one():
    text = TEXT.replace("\n  sandbox:\n", "\n  qa:\n", 1)
    message = problem(text)
    assert message.startswith(
        f"{FILE}:{line_of(text, '  qa:')}: environments.qa: unknown key; expected one of sandbox, staging, production"
    )
    assert "environments.sandbox: required key is missing" in " ".join(config_problems(text))


def config_problems(text: str) -> list[str]:
    with pytest.raises(config.ConfigError) as caught:
        config.validate_text(text)
    return caught.value.problems


@pytest.mark.parametrize("env", ["staging", "production"])
def test_promoted_environments_must_define_gates(env):
    start = TEXT.index(f"\n  {env}:\n")
    gates = TEXT.index("    gates:", start)
    after = TEXT.find("\n\n", gates)
    text = TEXT[:gates] + (TEXT[after:] if after != -1 else "\n")
    message = problem(text)
    assert message.startswith(f"{FILE}:{line_of(text, f'  {env}:')}: environments.{env}.gates: required: promotion")
    assert problem(replace_in(env, "    gates:", "    gates: {}\n    old_gates:")).count("gates") >= 1


def test_sandbox_gates_are_optional():
    start = TEXT.index("\n  sandbox:\n")
    gates = TEXT.index("    gates:", start)
    after = TEXT.index("\n\n", gates)
    config.validate_text(TEXT[:gates] + TEXT[after + 1 :])


def test_gate_names_and_values():
    text = replace_in("staging", "min_accuracy: 0.90", "min-accuracy: 0.90")
    assert problem(text) == (
        f"{FILE}:{line_of(text, 'min-accuracy')}: environments.staging.gates.min-accuracy: "
        "not a gate; expected min_<metric>, max_regression or max_latency_ms"
    )
    text = replace_in("staging", "min_accuracy: 0.90", "min_accuracy: high")
    assert problem(text) == (
        f"{FILE}:{line_of(text, 'min_accuracy: high')}: environments.staging.gates.min_accuracy: "
        "is the string 'high'; expected a number"
    )
    with pytest.raises(config.ConfigError, match=r"staging\.gates\.max_latency_ms: is True; expected a number"):
        config.validate_text(replace_in("staging", "max_latency_ms: 500", "max_latency_ms: true"))


def test_malformed_yaml_names_the_line():
    text = TEXT.replace("\n  staging:\n", "\n  staging:\n    cluster: [unclosed\n", 1)
    message = problem(text)
    assert re.match(rf"{FILE}:{line_of(text, '[unclosed') + 1}: not valid YAML: ", message), message
    tab = TEXT.replace("\n  staging:\n", "\n\tstaging:\n", 1)
    assert problem(tab).startswith(f"{FILE}:{line_of(tab, 'staging:')}: not valid YAML: found character '\\t'")


def test_duplicate_keys_are_errors():
    text = replace_in("staging", "    backend: local\n", "    backend: local\n    backend: cluster\n")
    assert (
        problem(text) == f"{FILE}:{line_of(text, '    backend: cluster')}: environments.staging.backend: duplicate key"
    )


def test_types_and_required_keys():
    text = TEXT.replace('kubernetes_version: "1.32"', "kubernetes_version: 1.32")
    assert problem(text).startswith(f"{FILE}:{line_of(text, 'kubernetes_version')}: kubernetes_version: is 1.32;")
    text = TEXT.replace("promotion: transit", "promotion: teleport")
    assert "promotion: is the string 'teleport'; expected 'transit' or 'retrain'" in problem(text)
    text = replace_in("production", "    namespace: churn-classifier-production\n", "")
    assert problem(text) == (
        f"{FILE}:{line_of(text, '  production:')}: environments.production.namespace: required key is missing"
    )
    text = TEXT.replace("  run_s: 3600", "  run_s: -1")
    assert "timeouts.run_s: is -1; expected a number greater than 0" in problem(text)
    text = TEXT.replace("image: ghcr.io/my-org/churn-classifier", "image: ghcr.io/my-org/churn-classifier:0.1.0")
    assert "image: is 'ghcr.io/my-org/churn-classifier:0.1.0'; expected an image name without tag" in problem(text)
    assert problem("").startswith(f"{FILE}:1: project: required key is missing (and ")
    assert problem("- a\n").startswith(f"{FILE}:1: (top level): is a list; expected a mapping")


def test_pipelines_and_parameters_keys():
    text = TEXT.replace("training: churn_classifier.pipelines:training_pipeline", "training: training_pipeline")
    assert "pipelines.training: is 'training_pipeline'; expected <module>:<function>" in problem(text)
    text = TEXT.replace("    max_iter: 1000\n", "    max-iter: 1000\n", 1)
    assert f"{FILE}:{line_of(text, 'max-iter')}: training.parameters.max-iter:" in problem(text)
    override = "    parameters:\n      trainig: {max_iter: 200}\n"
    text = replace_in("sandbox", "    cluster:\n", override + "    cluster:\n")
    assert problem(text) == (
        f"{FILE}:{line_of(text, 'trainig')}: environments.sandbox.parameters.trainig: no such pipeline; "
        "expected one of features, training (the keys of pipelines:)"
    )


def test_every_problem_is_listed_one_line_each():
    text = replace_in("staging", "    gates:", "    gate:").replace("serving: true ", 'serving: "yes" ', 1)
    problems = config_problems(text)
    assert len(problems) >= 3 and all(p.startswith(f"{FILE}:") and "\n" not in p for p in problems)
    assert str(problems[0]) in problem(text) and "more: run `mlrail check-config`" in problem(text)


def test_parameters_with_per_environment_overrides(project_copy):
    path = project_copy / "config" / "environments.yaml"
    override = "    parameters:\n      training: {max_iter: 200, seed: 7}\n"
    path.write_text(replace_in("sandbox", "    cluster:\n", override + "    cluster:\n", path.read_text()))
    cfg = config.load()
    assert cfg.parameters("training", "sandbox") == {"c": 1.0, "max_iter": 200, "seed": 7}
    assert cfg.parameters("training", "staging") == {"c": 1.0, "max_iter": 1000, "seed": 42}
    assert cfg.parameters("features", "sandbox") == {"test_fraction": 0.2, "seed": 42}
    assert cfg.parameter_sources("training", "sandbox") == {
        "c": "training.parameters.c",
        "max_iter": "environments.sandbox.parameters.training.max_iter",
        "seed": "environments.sandbox.parameters.training.seed",
    }


def test_unknown_environment(project_copy):
    with pytest.raises(config.ConfigError, match="unknown environment"):
        config.load().env("qa")


def test_json_schema_states_the_rules():
    schema = config.json_schema()
    assert json.loads(config.schema_text()) == schema
    assert schema["additionalProperties"] is False and "environments" in schema["required"]
    promoted = schema["$defs"]["PromotedEnvironment"]
    assert "gates" in promoted["required"] and promoted["additionalProperties"] is False
    assert promoted["properties"]["gates"]["minProperties"] == 1
    assert schema["$defs"]["EnvironmentsModel"]["required"] == ["sandbox", "staging", "production"]
