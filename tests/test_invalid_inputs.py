"""Bad answers stop generation: one line naming the key and the value, no traceback from our
hook, no output left behind. Generating over an existing project fails and touches nothing."""

from __future__ import annotations

import pytest
from cookiecutter.exceptions import FailedHookException, OutputDirExistsException
from template_support import hook_frames_outside_cookiecutter, load_hook, tree_digest

MAX_PROJECT = load_hook("pre_gen_project").MAX_PROJECT

# (answers given, key the hook must name, value it must quote)
INVALID = [
    ({"project": "Churn-Classifier"}, "project", "Churn-Classifier"),
    ({"project": "1churn"}, "project", "1churn"),
    ({"project": "churn--classifier"}, "project", "churn--classifier"),
    ({"project": "churn-"}, "project", "churn-"),
    ({"project": "c" * (MAX_PROJECT + 1)}, "project", "c" * (MAX_PROJECT + 1)),
    ({"project": "c" * 48}, "project", "c" * 48),  # "<project>-pipeline-runner" would be 64
    ({"project_name": "Churn", "project": "churn_classifier"}, "project", "churn_classifier"),
    ({"package": "class"}, "package", "class"),
    ({"package": "match"}, "package", "match"),
    ({"package": "json"}, "package", "json"),
    ({"package": "sklearn"}, "package", "sklearn"),
    ({"package": "mlrail"}, "package", "mlrail"),
    ({"package": "p" * 44}, "package", "p" * 44),
    ({"package": "churn-classifier"}, "package", "churn-classifier"),
    ({"package": "2churn"}, "package", "2churn"),
    ({"github_owner": "-my-org"}, "github_owner", "-my-org"),
    ({"github_owner": "my_org"}, "github_owner", "my_org"),
    ({"github_owner": "o" * 40}, "github_owner", "o" * 40),
    ({"container_registry": "ghcr.io/My-Org"}, "container_registry", "ghcr.io/My-Org"),
    ({"container_registry": "https://ghcr.io/my-org"}, "container_registry", "https://ghcr.io/my-org"),
    ({"container_registry": "ghcr.io/my org"}, "container_registry", "ghcr.io/my org"),
    ({"staging_registry_uri": "ftp://mlflow.example.com"}, "staging_registry_uri", "ftp://mlflow.example.com"),
    ({"sandbox_registry_uri": "mlflow:5000"}, "sandbox_registry_uri", "mlflow:5000"),
    (
        {"production_registry_uri": "http://mlflow.example.com/?x=1"},
        "production_registry_uri",
        "http://mlflow.example.com/?x=1",
    ),
    ({"kubernetes_version": "1.24"}, "kubernetes_version", "1.24"),
    ({"kubernetes_version": "1.38"}, "kubernetes_version", "1.38"),
    ({"kubernetes_version": "v1.32"}, "kubernetes_version", "v1.32"),
    ({"kubernetes_version": "1.32.1"}, "kubernetes_version", "1.32.1"),
    ({"python_version": "3.9"}, "python_version", "3.9"),
    ({"python_version": "3.14"}, "python_version", "3.14"),
    ({"python_version": "3"}, "python_version", "3"),
    ({"python_version": "three"}, "python_version", "three"),
    ({"release_owners": "my-org/ml-release"}, "release_owners", "my-org/ml-release"),
    ({"release_owners": "@my-org/ml release"}, "release_owners", "@my-org/ml release"),
    ({"release_owners": "   "}, "release_owners", "   "),
    ({"project_name": 'Churn "Classifier"', "project": "churn"}, "project_name", 'Churn "Classifier"'),
    ({"project_name": "Churn's {model}", "project": "churn"}, "project_name", "Churn's {model}"),
    ({"description": 'Says "hi"'}, "description", 'Says "hi"'),
    # The slug (the default `project`) would be empty: cookiecutter used to say "already exists".
    ({"project_name": ""}, "project_name", ""),
    ({"project_name": "!!!"}, "project_name", "!!!"),
    ({"project_name": " - "}, "project_name", " - "),
    ({"project_name": "🚀"}, "project_name", "🚀"),
    ({"description": "costs $HOME"}, "description", "costs $HOME"),
]


@pytest.mark.parametrize(("answers", "key", "value"), INVALID, ids=[f"{k}={v[:24]}" for _, k, v in INVALID])
def test_invalid_answer_fails_cleanly(make_project, tmp_path, capfd, answers, key, value):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(FailedHookException, match=r"exit status: 1\)"):
        make_project(output_dir=out, **answers)
    err = capfd.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, f"expected one error line, got:\n{err}"
    assert f"{key}={value!r}" in error_lines[0], error_lines[0]
    assert "expected" in error_lines[0]
    assert hook_frames_outside_cookiecutter(err) == [], f"traceback from our hook:\n{err}"
    assert list(out.iterdir()) == [], f"left behind: {list(out.iterdir())}"


def test_enough_distinct_invalid_inputs():
    assert len(INVALID) >= 12
    assert {key for _, key, _ in INVALID} >= {
        "project",
        "package",
        "github_owner",
        "container_registry",
        "sandbox_registry_uri",
        "kubernetes_version",
        "python_version",
        "release_owners",
        "project_name",
    }


@pytest.mark.parametrize(("key", "value"), [("promotion", "canary"), ("argocd", "maybe")])
def test_value_outside_a_choice_list_is_rejected_before_hooks(make_project, tmp_path, key, value):
    """cookiecutter's own check: it refuses before rendering anything."""
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match=rf"{value} provided for choice variable {key}"):
        make_project(output_dir=out, **{key: value})
    assert list(out.iterdir()) == []


def test_generating_twice_fails_without_touching_the_first_tree(make_project, tmp_path):
    out = tmp_path / "out"
    first = make_project(output_dir=out, promotion="retrain")
    (first / "local-work.txt").write_text("work the user did after generating\n")
    before = tree_digest(first)
    for answers in ({"promotion": "retrain"}, {"promotion": "transit", "argocd": "no"}):
        with pytest.raises(OutputDirExistsException):
            make_project(output_dir=out, **answers)
        assert tree_digest(first) == before, "the second generation modified the first tree"
    assert sorted(path.name for path in out.iterdir()) == [first.name]
