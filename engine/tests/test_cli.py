"""The typer CLI: help, exit codes (0 ok, 1 user error, 2 usage, 3 gate, 130 interrupted),
`--param NAME=VALUE` parsing, and `compile --out` with an absolute path (a traceback before)."""

import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from mlrail import cli, config, promotion
from mlrail.cli import _app

COMMANDS = {
    "compile", "render", "validate", "run", "sandbox", "staging", "promote", "production", "rollback", "prs",
    "merge", "status", "serve", "smoke", "stop", "endpoints", "diff", "lint-workflows", "ci", "upload-pipeline",
    "sync", "pr-comment", "ci-summary", "check-config", "config-schema", "verify-release", "recreate-registry",
}  # fmt: skip


@pytest.fixture()
def runner():
    return CliRunner()


def test_every_command_exists_and_help_documents_the_exit_codes(runner):
    assert set(cli.command_names()) == COMMANDS
    result = runner.invoke(_app.app, ["--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Exit codes: 0 ok; 1 a user or input error" in text and "2 a usage error" in text
    assert "3 a gate failed" in text and "130 interrupted" in text
    for name in ("run", "sandbox", "staging"):
        result = runner.invoke(_app.app, [name, "--help"])
        assert result.exit_code == 0 and "--param NAME=VALUE" in result.output


def test_the_cli_environments_are_the_configs():
    assert _app.ENVIRONMENTS == config.ENVIRONMENTS


def test_help_is_fast_and_imports_no_heavy_library():
    code = (
        "import sys, time; t = time.perf_counter(); from mlrail import cli; cli.main(['--help']); "
        "heavy = [m for m in ('mlflow', 'kfp', 'pydantic', 'mlserver', 'requests', 'rich') if m in sys.modules]; "
        "print(heavy, time.perf_counter() - t, file=sys.stderr)"
    )
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "Usage: mlrail" in done.stdout
    assert done.stderr.startswith("[] "), done.stderr
    assert time.perf_counter() - started < 10


def test_usage_errors_exit_2(runner):
    result = runner.invoke(_app.app, ["sandbox", "--c", "0.5"])
    assert result.exit_code == 2 and "No such option: --c" in result.output
    result = runner.invoke(_app.app, ["run", "--env", "qa"])
    assert result.exit_code == 2 and "'qa' is not one of" in result.output
    assert runner.invoke(_app.app, ["no-such-command"]).exit_code == 2
    assert cli.main(["merge"]) == 2  # a required option missing


def test_user_mistakes_print_one_error_line_and_exit_1(project_copy, runner):
    result = runner.invoke(_app.app, ["run", "--env", "sandbox", "--param", "c"])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: --param 'c' is not of the form NAME=VALUE, e.g. --param seed=7"
    ]
    result = runner.invoke(_app.app, ["run", "--env", "sandbox", "--param", "n_estimators=200"])
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: --param n_estimators is not a parameter of churn_classifier.pipelines:training_pipeline; "
        "it takes c, max_iter, seed"
    )
    result = runner.invoke(_app.app, ["run", "--env", "sandbox", "--param", "max_iter=lots"])
    assert result.exit_code == 1 and result.stderr.strip() == "error: --param max_iter is 'lots'; expected an int"


def test_a_config_mistake_is_exit_1_with_file_and_line(project_copy, runner):
    path = project_copy / "config" / "environments.yaml"
    text = path.read_text()
    path.write_text(text.replace("auto_merge: false", 'auto_merge: "false"'))
    for argv in (["status"], ["check-config"], ["check-config", "--schema-only"]):
        result = runner.invoke(_app.app, argv)
        assert result.exit_code == 1, argv
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith("error: config/environments.yaml:") and "environments.production.auto_merge" in line


def test_config_schema_prints_json_schema(runner):
    import json

    result = runner.invoke(_app.app, ["config-schema"])
    assert result.exit_code == 0 and json.loads(result.stdout) == config.json_schema()


def test_param_options_reach_the_flow_as_data(project_copy, runner, monkeypatch):
    seen = []

    def fake_sandbox(cfg, parameters):
        seen.append(parameters)
        raise promotion.PromotionError("stopped here")

    monkeypatch.setattr(promotion, "run_sandbox", fake_sandbox)
    argv = ["sandbox", "--param", "c=0.5", "--param", "seed=7", "--param", "columns=[1, 2]"]
    result = runner.invoke(_app.app, argv)
    assert result.exit_code == 1 and "error: stopped here" in result.stderr
    assert seen == [{"c": "0.5", "seed": "7", "columns": "[1, 2]"}]


def test_a_failed_gate_exits_3_and_an_interrupt_130(project_copy, runner, monkeypatch):
    def failing(cfg, parameters, **_options):
        raise promotion.GateFailure("staging gates failed", promotion.Flow("staging", "staging", "transit").finish())

    monkeypatch.setattr(promotion, "run_staging", failing)
    result = runner.invoke(_app.app, ["staging"])
    assert result.exit_code == 3 and result.stderr.strip().endswith("error: staging gates failed")

    def interrupted(cfg, parameters, **_options):
        raise KeyboardInterrupt

    monkeypatch.setattr(promotion, "run_staging", interrupted)
    result = runner.invoke(_app.app, ["staging"])
    assert result.exit_code == 130 and "interrupted: rerun the same command" in result.stderr


def test_compile_to_an_absolute_folder(project_copy, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("elsewhere") / "pipelines"  # outside the repository
    assert cli.main(["compile", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.yaml")) == ["features.yaml", "training.yaml"]
    assert str(out / "training.yaml") in printed
    assert cli.main(["compile", "--out", "build/relative"]) == 0
    assert "| training | build/relative/training.yaml |" in capsys.readouterr().out


def test_no_library_module_imports_the_cli():
    from pathlib import Path

    import mlrail

    package = Path(mlrail.__file__).parent
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "cli" not in path.relative_to(package).parts[:1]
        and any(s in path.read_text() for s in ("from .cli", "from ..cli", "mlrail.cli", "from . import cli"))
    ]
    assert offenders == []
