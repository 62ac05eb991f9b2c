"""Deep tests: a freshly generated repository passes its own `make bootstrap check test`.

Slow (a minute or more each), so this module's name sorts first and each test is its own
xdist group: with `--dist loadgroup` the two start at once on separate workers, before the
fast tests, and the whole run stays short. Run only these with `pytest -m deep`, skip them
with `-m "not deep"`. The generated repo's own `pytest -n auto` runs with one worker (two
deep tests side by side already fill two cores; measured 72 s against 94 s with two each);
DEEP_TEST_WORKERS=<n> changes that. `make bootstrap` installs the pinned dependencies with uv
(from its cache when warm, else from PyPI): the only step of the template tests that may use
the network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

TAIL_LINES = 80
STEP_TIMEOUT = 900  # seconds; a step that hangs fails instead of blocking the run

DEEP = [
    pytest.param(
        {"promotion": "transit", "argocd": "yes"},
        id="transit-argocd",
        marks=pytest.mark.xdist_group("deep-transit-argocd"),
    ),
    # non-default names too: project and package not derived from each other, another owner,
    # registry and Kubernetes version, so the generated tests run against renamed code
    pytest.param(
        {
            "promotion": "retrain",
            "argocd": "no",
            "project_name": "Fraud Detector",
            "project": "fraud-detector",
            "package": "fraud_model",
            "github_owner": "acme",
            "container_registry": "registry.example.com/ml",
            "kubernetes_version": "1.30",
        },
        id="retrain-no-argocd",
        marks=pytest.mark.xdist_group("deep-retrain-no-argocd"),
    ),
]


def generated_repo_env() -> dict[str, str]:
    """The environment of a person running make in the new repo: none of this run's pytest,
    xdist or make state leaks in, and its `pytest -n auto` gets one worker so that two deep
    tests running side by side do not oversubscribe two cores."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTEST_", "MAKE", "MFLAGS", "VIRTUAL_ENV", "COV_CORE_"))
    }
    env.update(MLFLOW_DISABLE_TELEMETRY="true", PYTEST_XDIST_AUTO_NUM_WORKERS=os.environ.get("DEEP_TEST_WORKERS", "1"))
    return env


def run_make(project: Path, target: str, env: dict[str, str]) -> tuple[float, str]:
    started = time.monotonic()
    try:
        result = subprocess.run(
            ["make", target],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=STEP_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        output = error.stdout if isinstance(error.stdout, str) else (error.stdout or b"").decode(errors="replace")
        pytest.fail(
            f"`make {target}` in {project} timed out after {STEP_TIMEOUT}s; last lines:\n{tail(output)}", pytrace=False
        )
    if result.returncode != 0:
        pytest.fail(
            f"`make {target}` in {project} exited {result.returncode}; last lines:\n{tail(result.stdout)}",
            pytrace=False,
        )
    return time.monotonic() - started, result.stdout


def tail(output: str) -> str:
    return "\n".join(output.splitlines()[-TAIL_LINES:])


@pytest.mark.deep
@pytest.mark.parametrize("answers", DEEP)
def test_generated_repo_bootstraps_checks_and_tests_itself(answers, make_project, tmp_path):
    project = make_project(**answers)
    env = generated_repo_env()
    timings = {target: run_make(project, target, env)[0] for target in ("bootstrap", "check", "test")}
    print("wall seconds: " + ", ".join(f"make {target} {seconds:.0f}" for target, seconds in timings.items()))
    status = subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True, check=True)
    assert status.stdout == "", f"make bootstrap check test left untracked or modified files:\n{status.stdout}"
    shutil.rmtree(project)  # the venv is large; a failing run keeps it for inspection
