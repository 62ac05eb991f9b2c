"""Every option combination generates the expected tree, records its answers and commits."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from template_support import (
    CUSTOM_ANSWERS,
    PROJECT_TEMPLATE,
    PROMOTIONS,
    ROOT,
    answer_keys,
    expected_files,
    project_files,
    removed_by_options,
    text_files,
)


def git(project: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(project), *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"git {' '.join(args)} failed in {project}: {result.stderr}"
    return result.stdout.strip()


def test_generates_into_the_project_directory(baked):
    assert baked.path.name == baked.answers["project"]
    assert baked.path.is_dir()


def test_file_set_matches_the_options(baked):
    expected = expected_files(baked.answers)
    actual = project_files(baked.path)
    missing, extra = sorted(expected - actual), sorted(actual - expected)
    assert not missing and not extra, f"{baked.name}: missing {missing}, unexpected {extra}"


def test_files_of_unchosen_options_are_gone(baked):
    for relative in removed_by_options(baked.answers):
        assert not (baked.path / relative).exists(), f"{baked.name}: {relative} should have been removed"
    chosen = baked.answers["promotion"]
    for relative in (f"docs/promotion-{chosen}.md", f".github/workflows/production-{chosen}.yml"):
        if (PROJECT_TEMPLATE / relative).exists():
            assert (baked.path / relative).is_file(), f"{baked.name}: the chosen pattern's {relative} is missing"
    if baked.answers["argocd"] == "yes" and (PROJECT_TEMPLATE / "deploy/argocd").is_dir():
        assert any((baked.path / "deploy/argocd").iterdir())


def test_template_ships_both_promotion_patterns():
    """Each promotion pattern exists in the template, so each option has something to keep."""
    for pattern in PROMOTIONS:
        other = next(p for p in PROMOTIONS if p != pattern)
        own = [
            PROJECT_TEMPLATE / f"docs/promotion-{pattern}.md",
            PROJECT_TEMPLATE / f".github/workflows/production-{pattern}.yml",
        ]
        present = [path for path in own if path.exists()]
        twins = [Path(str(path).replace(pattern, other)) for path in present]
        assert all(twin.exists() for twin in twins), f"{pattern} files without their {other} counterpart"


def test_cruft_json_records_every_answer_and_the_template(baked):
    record = json.loads((baked.path / ".cruft.json").read_text())
    recorded = record["context"]["cookiecutter"]
    for key in answer_keys():
        assert recorded[key] == baked.answers[key], f"{baked.name}: .cruft.json answer {key}"
    assert Path(record["template"]) == ROOT
    assert Path(recorded["_template"]) == ROOT
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    assert record["commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    assert ".git" in record["skip"]


def test_initial_commit_on_main_with_a_clean_tree(baked):
    assert git(baked.path, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert git(baked.path, "rev-list", "--count", "HEAD") == "1"
    assert git(baked.path, "status", "--porcelain", "--untracked-files=all") == ""
    committed = set(git(baked.path, "ls-files").splitlines())
    assert committed == project_files(baked.path), "every generated file is in the initial commit"


def test_custom_answers_leave_no_default_behind(baked_variants):
    """With other names, nothing of the defaults (project, package, owner, registry,
    versions) may remain: a leftover means a hard-coded value in the template. The generated
    tests may use any literal as test data; the deep test with other names runs them."""
    baked = baked_variants("custom-retrain-argocd")
    defaults = ["churn-classifier", "churn_classifier", "Churn Classifier", "my-org", 'kubernetes_version: "1.32"']
    found = [
        f"{relative}: {needle}"
        for relative, text in text_files(baked.path)
        if not relative.startswith("tests/")
        for needle in defaults
        if needle in text
    ]
    assert not found, "default values left in a project generated with other answers:\n" + "\n".join(found)
    assert (baked.path / "src" / CUSTOM_ANSWERS["package"] / "__init__.py").is_file()
    assert not (baked.path / "src" / CUSTOM_ANSWERS["project"].replace("-", "_")).exists()


def test_custom_answers_reach_the_files_that_use_them(baked_variants):
    baked = baked_variants("custom-transit-no-argocd")
    texts = dict(text_files(baked.path))
    package, project = baked.answers["package"], baked.answers["project"]
    assert texts[".python-version"].strip() == baked.answers["python_version"]
    version = baked.answers["python_version"]
    assert f"PYTHON_VERSION={version}\n" in texts["Dockerfile"] or f"python:{version}" in texts["Dockerfile"]
    assert f'kubernetes_version: "{baked.answers["kubernetes_version"]}"' in texts["config/environments.yaml"]
    assert f"{package}.pipelines:training_pipeline" in texts["config/environments.yaml"]
    assert f'name = "{project}"' in texts["pyproject.toml"]
    assert f'"mlrail=={baked.answers["_engine_version"]}"' in texts["pyproject.toml"]
    # the project slug and the package differ here: each must be used where it belongs
    wrong_package = project.replace("-", "_")
    assert not [name for name, text in texts.items() if wrong_package in text]


@pytest.mark.parametrize("identity", [False, True], ids=["no-git-identity", "user-identity"])
def test_initial_commit_author(make_project, tmp_path, monkeypatch, identity):
    """Without a git identity the hook commits as the template; with one, as the user."""
    if identity:
        gitconfig = tmp_path / "gitconfig"
        gitconfig.write_text("[user]\n\tname = Ada Lovelace\n\temail = ada@example.com\n")
        monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
    project = make_project(promotion="retrain", argocd="no")
    author = git(project, "log", "-1", "--format=%an <%ae>")
    assert author == ("Ada Lovelace <ada@example.com>" if identity else "mlops-template <mlops-template@localhost>")


def test_generation_ignores_an_outer_git_repository(make_project, tmp_path, monkeypatch):
    """Run from inside another repository's git hook (GIT_DIR set), the initial commit still
    goes to the new project, never into the outer repository."""
    outer = tmp_path / "outer"
    subprocess.run(["git", "init", "--quiet", str(outer)], check=True)
    monkeypatch.setenv("GIT_DIR", str(outer / ".git"))
    monkeypatch.setenv("GIT_WORK_TREE", str(outer))
    project = make_project()
    monkeypatch.delenv("GIT_DIR")
    monkeypatch.delenv("GIT_WORK_TREE")
    assert git(project, "rev-list", "--count", "HEAD") == "1"
    assert git(project, "rev-parse", "--show-toplevel") == str(project)
    outer_log = subprocess.run(["git", "-C", str(outer), "log"], capture_output=True, text=True, check=False)
    assert outer_log.returncode != 0, "the outer repository must still have no commit"


def test_relative_template_path_is_recorded_absolute(cookiecutter_config, tmp_path, monkeypatch):
    """Called as a library from another directory than the shell's $PWD, .cruft.json still
    names the template by its absolute path, so `cruft update` finds it."""
    from template_support import generate

    monkeypatch.chdir(ROOT.parent)
    monkeypatch.setenv("PWD", "/")  # a stale $PWD, as after os.chdir in a calling program
    project = generate(tmp_path / "out", cookiecutter_config, {}, template=ROOT.name)
    record = json.loads((project / ".cruft.json").read_text())
    assert Path(record["template"]) == ROOT
