"""A property over the answers: every context either generates a repository whose files parse
and render (the part of `make check` that needs no venv), or is rejected with one line naming
an input and nothing left behind."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml
from cookiecutter.exceptions import FailedHookException, OutputDirExistsException
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from template_support import ENVIRONMENTS, generate, kustomize_argv, kustomize_build, text_files

KEYS = ("project_name", "project", "package", "description", "github_owner", "container_registry")
# Letters and digits of several scripts, separators and the punctuation people type in names;
# half the names only from characters a name may hold, half from anything.
SAFE = list("abcXYZ019 -_.:#&/!?éßÅ日本🚀\t")
ANY = [*SAFE, *"'\"{}$\\"]
name = st.one_of(st.text(st.sampled_from(SAFE), max_size=24), st.text(st.sampled_from(ANY), max_size=12))
# Names that are valid slugs or packages as often as not.
label = st.one_of(
    st.from_regex(r"[a-z][a-z0-9]{0,5}(-?[a-z0-9]){0,5}", fullmatch=True),
    st.text(st.sampled_from(list("abz09-_.A")), max_size=12),
)

contexts = st.fixed_dictionaries(
    {
        "project_name": name,
        "promotion": st.sampled_from(["transit", "retrain"]),
        "argocd": st.sampled_from(["yes", "no"]),
    },
    optional={
        "project": label,
        "package": label,
        "description": name,
        "github_owner": label,
        "container_registry": st.sampled_from(["ghcr.io/acme", "localhost:5000/ml", "Ghcr.io/x", "ghcr.io/x/"]),
    },
)

pytestmark = pytest.mark.skipif(kustomize_argv() is None, reason="neither kustomize nor kubectl is on PATH")


def assert_repository_parses(project: Path, answers: dict) -> None:
    for relative, text in text_files(project):
        assert "{{ cookiecutter" not in text and "{%" not in text, f"leftover Jinja in {relative}"
        if relative.endswith((".yaml", ".yml")):
            list(yaml.safe_load_all(text))
        elif relative.endswith(".toml"):
            tomllib.loads(text)
        elif relative.endswith(".json"):
            json.loads(text)
        elif relative.endswith(".py"):
            compile(text, relative, "exec")
    for env in ENVIRONMENTS:
        docs = kustomize_build(project / "deploy" / "overlays" / env)
        namespaces = {doc["metadata"]["name"] for doc in docs if doc["kind"] == "Namespace"}
        assert namespaces == {f"{project.name}-{env}"}
    if answers["argocd"] == "yes":
        assert kustomize_build(project / "deploy" / "argocd")


@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure reproduces
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(answers=contexts)
def test_every_context_generates_a_sound_repository_or_is_rejected_cleanly(
    answers, tmp_path_factory, cookiecutter_config, capfd
):
    out = tmp_path_factory.mktemp("property")
    capfd.readouterr()
    try:
        project = generate(out, cookiecutter_config, answers)
    except FailedHookException:
        errors = [line for line in capfd.readouterr().err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, errors
        assert any(errors[0].startswith(f"error: {key}=") for key in KEYS), errors[0]
        assert list(out.iterdir()) == [], "a rejected context left files behind"
        event(f"rejected: {errors[0].split('=')[0][7:]}")
    except OutputDirExistsException:
        # Only an explicit slug that names the output directory itself ("", ".", ".."):
        # cookiecutter stops before any hook runs (docs/faults.md) and writes nothing.
        assert answers.get("project") in ("", ".", "..")
        assert list(out.iterdir()) == []
        event("rejected by cookiecutter: directory exists")
    else:
        assert_repository_parses(project, answers)
        event("generated")
    finally:
        shutil.rmtree(out, ignore_errors=True)
