"""Deep tests: a freshly generated repository bootstraps against the locally built engine and
passes its own `make bootstrap check test`, and leaves its tree clean.

Each test is its own xdist group (`--dist loadgroup`) and this module sorts first, so the slow
tests start at once, before the fast ones. Run only these with `pytest -m deep`. `make
bootstrap` gets ENGINE_WHEELS (the engine wheel built from engine/) and the run's one uv cache:
only third-party packages come from the package index. The generated repo's own `pytest -n auto`
runs with one worker (two deep tests side by side already fill two cores).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from template_support import generated_repo_env, run_make

DEEP = [
    pytest.param({}, id="default-answers", marks=pytest.mark.xdist_group("deep-default")),
    # unusual answers: a 43-character slug (the longest the hook accepts; line lengths depend on
    # it), another owner and registry, retrain without Argo CD, another Kubernetes version
    pytest.param(
        {
            "project_name": "Fraud Scorer For European Card Payments Ltd",
            "github_owner": "acme-payments-eu",
            "container_registry": "registry.example.com:5000/ml/fraud",
            "promotion": "retrain",
            "argocd": "no",
            "kubernetes_version": "1.30",
        },
        id="long-name-retrain-no-argocd",
        marks=pytest.mark.xdist_group("deep-long-name"),
    ),
]


@pytest.mark.deep
@pytest.mark.parametrize("answers", DEEP)
def test_generated_repo_bootstraps_checks_and_tests_itself(answers, make_project):
    project = make_project(**answers)
    env = generated_repo_env(workers=1)
    timings = {target: run_make(project, target, env=env)[0] for target in ("bootstrap", "check", "test")}
    print("wall seconds: " + ", ".join(f"make {target} {seconds:.0f}" for target, seconds in timings.items()))
    installed = subprocess.run(
        [
            str(project / ".venv/bin/python"),
            "-c",
            "import mlrail, sys; print(mlrail.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert str(project / ".venv") in installed, f"the engine is not installed from the wheel: {installed}"
    status = subprocess.run(
        ["git", "status", "--porcelain"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    )
    assert status.stdout == "", f"make bootstrap check test left untracked or modified files:\n{status.stdout}"
    shutil.rmtree(project)  # the venv is large; a failing run keeps it for inspection
