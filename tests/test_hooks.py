"""Unit tests of the hooks and cookiecutter.json, without generating anything."""

from __future__ import annotations

import json

import pytest
from template_support import COOKIECUTTER_JSON, VARIANTS, answer_keys, load_hook, render_answers

CONFIG = json.loads(COOKIECUTTER_JSON.read_text())


def test_every_key_has_a_prompt_and_a_pre_gen_check():
    hook = load_hook("pre_gen_project")
    keys = answer_keys()
    prompts = CONFIG["__prompts__"]
    assert [key for key in keys if key not in prompts] == [], "keys without a prompt"
    assert [key for key in prompts if key not in keys] == [], "prompts for keys that do not exist"
    assert sorted(hook.CHECKS) == sorted(keys), "pre_gen_project.CHECKS must check exactly the keys"
    assert sorted(hook.ANSWERS) == sorted(keys), "pre_gen_project.ANSWERS must carry exactly the keys"


def test_required_keys_are_present():
    required = {
        "project_name",
        "project",
        "package",
        "description",
        "github_owner",
        "container_registry",
        "promotion",
        "kubernetes_version",
        "python_version",
        "argocd",
    }
    assert required <= set(answer_keys())
    assert CONFIG["promotion"] == ["transit", "retrain"]
    assert CONFIG["argocd"] == ["yes", "no"]


def test_choice_prompts_describe_every_choice():
    for key in ("promotion", "argocd"):
        prompt = CONFIG["__prompts__"][key]
        assert prompt["__prompt__"]
        assert sorted(k for k in prompt if k != "__prompt__") == sorted(CONFIG[key])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_check_accepts_the_answers_we_generate_with(variant):
    answers = render_answers(VARIANTS[variant])
    hook = load_hook("pre_gen_project", answers)
    assert {key: answers[key] for key in answer_keys()} == hook.ANSWERS, "the hook sees what was answered"
    rejected = {key: check(answers[key]) for key, check in hook.CHECKS.items() if check(answers[key])}
    assert rejected == {}
    assert hook.main() == 0


def test_project_default_is_a_slug_of_the_name():
    """Punctuation and path separators in the name never reach the directory name."""
    assert render_answers({"project_name": "Churn Classifier"})["project"] == "churn-classifier"
    assert render_answers({"project_name": "Fraud/Risk: EU #2"})["project"] == "fraud-risk-eu-2"
    assert render_answers({"project_name": "Prix_Café"})["package"] == "prix_cafe"


@pytest.mark.parametrize(
    ("key", "value", "valid"),
    [
        ("project", "a", True),
        ("project", "a-1", True),
        ("project", "-a", False),
        ("project", "a.b", False),
        ("package", "churn_classifier", True),
        ("package", "_private", True),
        ("package", "case", False),  # soft keyword
        ("package", "os", False),
        ("package", "Churn", False),
        ("github_owner", "a", True),
        ("github_owner", "Acme-Labs", True),
        ("github_owner", "acme--labs", False),
        ("release_owners", "@a @org/team x@example.com", True),
        ("release_owners", "@org/team,@other", False),
        ("container_registry", "localhost:5000/ml", True),
        ("container_registry", "123456789012.dkr.ecr.eu-west-1.amazonaws.com/ml/team", True),
        ("container_registry", "ghcr.io/org/", False),
        ("container_registry", "ghcr.io/org:latest", False),
        ("sandbox_registry_uri", "http://localhost:5000", True),
        ("sandbox_registry_uri", "https://mlflow.example.com/api/", True),
        ("sandbox_registry_uri", "http://mlflow example.com", False),
        ("kubernetes_version", "1.25", True),
        ("kubernetes_version", "1.37", True),
        ("kubernetes_version", "2.1", False),
        ("python_version", "3.11", True),
        ("python_version", "3.13", True),
        ("python_version", "3.10", False),
        ("description", "", True),
        ("description", "x" * 301, False),
        ("project_name", "", False),
        ("project_name", "Model $X", False),
        ("project_name", "!!!", False),
        ("project_name", "--", False),
        ("project_name", "日本", True),
    ],
)
def test_single_checks(key, value, valid):
    hook = load_hook("pre_gen_project")
    message = hook.CHECKS[key](value)
    assert (message is None) is valid, message
    if message:
        assert "\n" not in message


def test_post_gen_hook_removes_exactly_the_unchosen_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for relative in (
        "docs/promotion-transit.md",
        "docs/promotion-retrain.md",
        ".github/workflows/production-transit.yml",
        ".github/workflows/production-retrain.yml",
        "deploy/argocd/kustomization.yaml",
        "deploy/base/x.yaml",
    ):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("x\n")
    hook = load_hook("post_gen_project", render_answers({"promotion": "retrain", "argocd": "no"}))
    hook.apply_promotion("retrain")
    hook.apply_argocd("no")
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert left == [".github/workflows/production-retrain.yml", "deploy/base/x.yaml", "docs/promotion-retrain.md"]


def test_an_empty_slug_still_reaches_the_pre_gen_check():
    """An empty or punctuation-only name gives `project` a placeholder default instead of "",
    so cookiecutter does not fail on the output directory before the hook can name the input."""
    for name in ("", "!!!", "🚀"):
        answers = render_answers({"project_name": name})
        assert answers["project"] == "invalid-project-name"
        hook = load_hook("pre_gen_project", answers)
        assert hook.check_project_name(name) is not None


def test_cruft_json_is_written_as_cruft_writes_it(tmp_path, monkeypatch):
    """Key order, layout and the rendered commit of `cruft create` (cruft 2.16: template,
    commit, checkout, context{cookiecutter{answers in cookiecutter.json order, private keys,
    _template, _commit}}, directory, then skip)."""
    answers = render_answers({"promotion": "retrain"})
    context = {
        **answers,
        "_template": "../tpl",
        "_output_dir": "/x",
        "_repo_dir": "../tpl",
        "_checkout": "v1",
    }
    context["_commit"] = "c" * 40  # cruft create passes the commit it rendered
    monkeypatch.chdir(tmp_path)
    hook = load_hook("post_gen_project", context)
    hook.record_answers()
    text = (tmp_path / ".cruft.json").read_text()
    record = json.loads(text)
    assert list(record) == [
        "template",
        "commit",
        "checkout",
        "context",
        "directory",
        "skip",
    ]
    assert record["commit"] == "c" * 40 and record["checkout"] == "v1" and record["directory"] is None
    recorded = record["context"]["cookiecutter"]
    assert list(recorded) == [k for k in CONFIG if k != "__prompts__"] + [
        "_template",
        "_commit",
    ]
    assert recorded["_commit"] == record["commit"] and recorded["_template"] == record["template"]
    assert text == json.dumps(record, ensure_ascii=False, indent=2, separators=(",", ": ")) + "\n"


def test_post_gen_prints_the_next_command(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PWD", str(tmp_path.parent))
    hook = load_hook("post_gen_project", render_answers())
    hook.ROOT = tmp_path
    hook.next_steps()
    out = capsys.readouterr().out
    assert f"cd {tmp_path.name} && make bootstrap && make check" in out
    assert "ENGINE_WHEELS=" in out
