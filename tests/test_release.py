"""The engine's release workflow: a tag v<version> builds mlrail and publishes it with trusted
publishing. The tag, the engine's version and the version generated repositories pin agree;
the workflow's own version check is run here against the real files."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib

import pytest
import yaml
from template_support import COOKIECUTTER_JSON, ROOT

RELEASE = ROOT / ".github" / "workflows" / "release.yml"
ENGINE_VERSION = tomllib.loads((ROOT / "engine" / "pyproject.toml").read_text())["project"]["version"]


def workflow() -> dict:
    doc = yaml.safe_load(RELEASE.read_text())
    doc["on"] = doc.pop(True, doc.get("on"))  # YAML 1.1 reads the key `on` as True
    return doc


def test_the_tag_the_engine_and_the_generated_pin_name_one_version():
    assert json.loads(COOKIECUTTER_JSON.read_text())["_engine_version"] == ENGINE_VERSION
    assert re.fullmatch(r"\d+\.\d+\.\d+", ENGINE_VERSION)


def version_check() -> str:
    steps = workflow()["jobs"]["build"]["steps"]
    (step,) = [s for s in steps if "TAG" in (s.get("env") or {})]
    return step["run"]


@pytest.mark.parametrize(("tag", "ok"), [(f"v{ENGINE_VERSION}", True), ("v0.0.1", False), (ENGINE_VERSION, False)])
def test_the_workflow_refuses_a_tag_that_is_not_the_engine_version(tag, ok):
    result = subprocess.run(
        ["bash", "-e", "-c", version_check()],
        cwd=ROOT,
        env={"TAG": tag, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode == 0) is ok, result.stdout + result.stderr
    if not ok:
        assert f"tag {tag}, engine/pyproject.toml {ENGINE_VERSION}" in result.stdout


def test_only_the_publish_job_may_mint_an_oidc_token_and_only_in_the_pypi_environment():
    doc = workflow()
    assert doc["on"] == {"push": {"tags": ["v*"]}}
    assert doc["permissions"] == {}
    jobs = doc["jobs"]
    assert jobs["build"]["permissions"] == {"contents": "read"}
    assert jobs["publish"]["permissions"] == {"id-token": "write"}
    assert jobs["publish"]["environment"] == "pypi" and jobs["publish"]["needs"] == "build"
    for job_id, job in jobs.items():
        assert isinstance(job["timeout-minutes"], int), job_id
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


def test_the_engine_is_built_with_uv_and_published_by_trusted_publishing():
    runs = [step.get("run", "") for job in workflow()["jobs"].values() for step in job["steps"]]
    assert "uv build engine --out-dir dist" in runs
    assert "uv publish --trusted-publishing always dist/*" in runs
    text = RELEASE.read_text()
    assert "password" not in text and "PYPI_TOKEN" not in text  # no stored token anywhere


def test_the_engine_builds_into_a_wheel_of_that_version(tmp_path):
    """What the release builds (`uv build`): one wheel named by the version the template pins."""
    uv = subprocess.run(["uv", "--version"], capture_output=True, check=False)
    if uv.returncode != 0:
        pytest.skip("uv is not on PATH")
    subprocess.run(
        ["uv", "build", "--quiet", "--wheel", str(ROOT / "engine"), "--out-dir", str(tmp_path)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    assert [p.name for p in tmp_path.glob("*.whl")] == [f"mlrail-{ENGINE_VERSION}-py3-none-any.whl"]
