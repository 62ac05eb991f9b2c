"""A generated project follows its template with `cruft update`: .cruft.json is what cruft itself
writes (so nothing is noise), a clean update applies, and a conflicting one leaves markers
that `make help` and `make conflicts` name instead of failing with "missing separator"."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from template_support import ROOT, generate

CRUFT = Path(sys.executable).with_name("cruft")
IDENTITY = ["-c", "user.name=test", "-c", "user.email=test@localhost"]
pytestmark = pytest.mark.skipif(not CRUFT.is_file(), reason="cruft is not installed (requirements-dev.txt)")


def git(cwd: Path, *argv: str) -> str:
    result = subprocess.run(["git", *IDENTITY, *argv], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"git {' '.join(argv)}: {result.stderr}"
    return result.stdout.strip()


def run(cwd: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=300)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


@pytest.fixture()
def template(tmp_path: Path) -> Path:
    """This template as a git repository of its own, version 1 committed."""
    copy = tmp_path / "template"
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "engine", "__pycache__", ".pytest_cache")
    shutil.copytree(ROOT, copy, ignore=ignore)
    git(copy, "init", "--quiet", "--initial-branch=main")
    git(copy, "add", "--all")
    git(copy, "commit", "--quiet", "-m", "template v1")
    return copy


def cruft_update(project: Path) -> subprocess.CompletedProcess:
    return run(project, str(CRUFT), "update", "--skip-apply-ask", "--allow-untracked-files")


def test_update_clean_and_with_conflicts(template, tmp_path, cookiecutter_config):
    project = generate(tmp_path / "out", cookiecutter_config, {"promotion": "retrain"}, template=template)
    v1 = git(template, "rev-parse", "HEAD")
    record = json.loads((project / ".cruft.json").read_text())
    assert record["commit"] == v1, "the commit rendered, not the template checkout of the test process"
    diff = run(project, str(CRUFT), "diff", "--exit-code")
    assert diff.returncode == 0 and diff.stdout.strip() == "", f"cruft diff right after generating:\n{diff.stdout}"

    # v2: a change the project did not touch applies cleanly.
    edit(template / "{{cookiecutter.project}}" / "README.md", "\n", "\n\nUpdated by template v2.\n")
    git(template, "commit", "--quiet", "-am", "template v2")
    updated = cruft_update(project)
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert "Updated by template v2." in (project / "README.md").read_text()
    record = json.loads((project / ".cruft.json").read_text())
    assert record["commit"] == git(template, "rev-parse", "HEAD")
    assert list(record) == ["template", "commit", "checkout", "context", "directory", "skip"]
    git(project, "add", "--all")
    git(project, "commit", "--quiet", "-m", "cruft update to v2")
    assert run(project, "make", "conflicts").returncode == 0

    # v3 changes lines the team changed too: the Makefile's help line and the README's title.
    makefile, readme = project / "Makefile", project / "README.md"
    edit(makefile, "## list the targets", "## list the targets (team)")
    title = readme.read_text().splitlines()[0]
    edit(readme, title, title + " (team)")
    git(project, "commit", "--quiet", "-am", "team edits")
    edit(template / "{{cookiecutter.project}}" / "Makefile", "## list the targets", "## list every target (v3)")
    template_title = (template / "{{cookiecutter.project}}" / "README.md").read_text().splitlines()[0]
    edit(template / "{{cookiecutter.project}}" / "README.md", template_title, template_title + " (v3)")
    git(template, "commit", "--quiet", "-am", "template v3")
    cruft_update(project)
    assert "<<<<<<<" in makefile.read_text() and "<<<<<<<" in readme.read_text(), "expected a three-way conflict"

    help_ = run(project, "make", "help")
    assert help_.returncode != 0
    assert "missing separator" not in help_.stderr
    assert "merge conflict markers in" in help_.stderr and "Makefile" in help_.stderr and "README.md" in help_.stderr

    # With the Makefile resolved, make runs again and names what is left.
    makefile.write_text(git(project, "show", "HEAD:Makefile") + "\n")
    help_ = run(project, "make", "help")
    assert help_.returncode == 0 and "make conflicts" in help_.stdout
    assert "merge conflict markers in: README.md" in help_.stderr
    conflicts = run(project, "make", "conflicts")
    assert conflicts.returncode != 0
    assert "error: merge conflict markers in README.md" in conflicts.stderr
