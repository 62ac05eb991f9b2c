"""Generated Python is lint-clean and already formatted whatever the answers: a short name, a
name with a space, the longest slug the hook accepts (line lengths depend on it), other owners.
Fast (ruff only); the deep tests run the generated repo's whole `make check` for two of these."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from template_support import load_hook

RUFF = Path(sys.executable).parent / "ruff"
LONGEST = load_hook("pre_gen_project").MAX_PROJECT

NAMES = [
    pytest.param({}, id="default"),
    pytest.param({"project_name": "Fraud Scorer"}, id="fraud-scorer"),
    pytest.param({"project_name": "ab"}, id="shortest"),
    pytest.param(
        {"project_name": "Fraud Scorer For European Card Payments Ltd", "github_owner": "acme-payments-eu"},
        id="long-name",
    ),
    pytest.param({"project": "p" * LONGEST, "package": "q" * LONGEST, "promotion": "retrain"}, id="longest-slug"),
]


def ruff(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RUFF), *args, "src", "tests"], cwd=project, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize("answers", NAMES)
def test_generated_python_passes_ruff_check_and_format(answers, make_project):
    project = make_project(**answers)
    checked = ruff(project, "check", "--no-cache")
    assert checked.returncode == 0, f"ruff check:\n{checked.stdout}{checked.stderr}"
    formatted = ruff(project, "format", "--check", "--no-cache", "--diff")
    assert formatted.returncode == 0, f"ruff format would change generated files:\n{formatted.stdout}"


def test_the_long_name_case_really_is_long(make_project):
    project = make_project(project_name="Fraud Scorer For European Card Payments Ltd")
    assert len(project.name) >= 40 and len(project.name) <= LONGEST
