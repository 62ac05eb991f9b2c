"""Shared helpers of the template tests: answers, expected trees, digests, kustomize.

Everything here reads the template itself (cookiecutter.json, the project tree), so the
expectations follow the template as files are added to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from cookiecutter.environment import StrictEnvironment
from cookiecutter.generate import generate_context
from cookiecutter.main import cookiecutter
from cookiecutter.prompt import prompt_for_config

ROOT = Path(__file__).resolve().parents[1]
COOKIECUTTER_JSON = ROOT / "cookiecutter.json"
PROJECT_TEMPLATE = ROOT / "{{cookiecutter.project}}"
ENVIRONMENTS = ("sandbox", "staging", "production")
PROMOTIONS = ("transit", "retrain")

# Answers that differ from every default: other names (project and package not derived from
# each other), a registry with a port and a deep path, https registries, the edge versions,
# and YAML-hostile but valid text (colon, hash, ampersand, apostrophe) in free-form fields.
CUSTOM_ANSWERS: dict[str, str] = {
    "project_name": "Fraud Detector: EU #2 & more",
    "project": "fraud-detector",
    "package": "fraud_model",
    "description": "Flags suspicious card payments: it's scored per merchant & country, #1 priority.",
    "github_owner": "Acme-Labs",
    "release_owners": "@Acme-Labs/ml-release @alice ops@acme.example.com",
    "container_registry": "registry.acme.example.com:5000/ml/fraud",
    "sandbox_registry_uri": "http://127.0.0.1:5001",
    "staging_registry_uri": "https://mlflow-staging.acme.example.com/",
    "production_registry_uri": "https://mlflow.acme.example.com:8443/prod",
    "kubernetes_version": "1.30",
    "python_version": "3.12",
}

# Every option combination, plus non-default answers on top of two of them.
VARIANTS: dict[str, dict[str, str]] = {
    "transit-argocd": {"promotion": "transit", "argocd": "yes"},
    "transit-no-argocd": {"promotion": "transit", "argocd": "no"},
    "retrain-argocd": {"promotion": "retrain", "argocd": "yes"},
    "retrain-no-argocd": {"promotion": "retrain", "argocd": "no"},
    "custom-retrain-argocd": {**CUSTOM_ANSWERS, "promotion": "retrain", "argocd": "yes"},
    "custom-transit-no-argocd": {
        **CUSTOM_ANSWERS,
        "project_name": "Demand Forecast",
        "project": "demand-fc",
        "package": "demand_forecasting",
        "kubernetes_version": "1.37",
        "python_version": "3.13",
        "promotion": "transit",
        "argocd": "no",
    },
}

# Kinds that never carry a namespace.
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
    "PersistentVolume",
    "IngressClass",
    "RuntimeClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "ClusterServingRuntime",
    "ClusterStorageContainer",
}


ENGINE = ROOT / "engine"
ENGINE_DIST = ROOT / "build" / "engine-dist"
# What a person's environment must not leak into a generated repository's make: this run's
# pytest, xdist, make and virtualenv state, and any engine or GitHub settings.
LEAKY_PREFIXES = (
    "PYTEST_",
    "MAKE",
    "MFLAGS",
    "VIRTUAL_ENV",
    "COV_CORE_",
    "MLOPS_",
    "GITHUB_",
)


def engine_version() -> str:
    import tomllib

    return tomllib.loads((ENGINE / "pyproject.toml").read_text())["project"]["version"]


def engine_wheels() -> Path:
    """The folder holding the engine wheel generated repositories bootstrap against: ENGINE_WHEELS
    when given (`make test` builds it first), else build/engine-dist, rebuilt here when engine/
    is newer (a lock keeps xdist workers from building it side by side). Only third-party
    packages come from the package index."""
    wheel_name = f"mlrail-{engine_version()}-py3-none-any.whl"
    if os.environ.get("ENGINE_WHEELS"):
        folder = Path(os.environ["ENGINE_WHEELS"]).resolve()
        assert (folder / wheel_name).is_file(), f"ENGINE_WHEELS={folder} holds no {wheel_name}: run `make engine`"
        return folder
    from filelock import FileLock

    folder, wheel = ENGINE_DIST, ENGINE_DIST / wheel_name
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".build.lock"), timeout=300):
        sources = [ENGINE / "pyproject.toml", *(ENGINE / "src").rglob("*.py")]
        if not wheel.exists() or wheel.stat().st_mtime < max(p.stat().st_mtime for p in sources):
            for old in folder.glob("mlrail-*.whl"):
                old.unlink()
            argv = ["uv", "build", "--quiet", "--wheel", str(ENGINE), "--out-dir", str(folder)]
            result = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
            assert result.returncode == 0 and wheel.exists(), f"`{' '.join(argv)}` failed:\n{result.stderr}"
    return folder


def uv_cache_dir() -> str:
    """One uv cache for every generated repository of the run (the template venv's, warm)."""
    if os.environ.get("UV_CACHE_DIR"):
        return os.environ["UV_CACHE_DIR"]
    found = subprocess.run(["uv", "cache", "dir"], capture_output=True, text=True, timeout=60, check=False)
    return found.stdout.strip() if found.returncode == 0 else ""


def generated_repo_env(workers: int = 1, **extra: str) -> dict[str, str]:
    """The environment of a person running make in a new repository, bootstrapping against the
    locally built engine. Its `pytest -n auto` gets `workers` workers: end-to-end tests run side
    by side on two cores already."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(LEAKY_PREFIXES)}
    env.update(
        MLFLOW_DISABLE_TELEMETRY="true",
        PYTEST_XDIST_AUTO_NUM_WORKERS=str(workers),
        ENGINE_WHEELS=str(engine_wheels()),
    )
    if cache := uv_cache_dir():
        env["UV_CACHE_DIR"] = cache
    env.update(extra)
    return env


def run_make(project: Path, *args: str, env: dict[str, str], timeout: float = 900) -> tuple[float, str]:
    """`make <args>` in a generated repository: (seconds, output); a failure or a hang fails the
    test with the output's tail and the logs of act runs, if any."""
    import time

    import pytest

    started = time.monotonic()
    try:
        result = subprocess.run(
            ["make", *args],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        output = error.stdout if isinstance(error.stdout, str) else (error.stdout or b"").decode(errors="replace")
        pytest.fail(
            f"`make {' '.join(args)}` in {project} timed out after {timeout:g}s:\n{tail(output)}",
            pytrace=False,
        )
    seconds = time.monotonic() - started
    print(f"make {' '.join(args)}: {seconds:.0f}s")
    if result.returncode != 0:
        logs = "\n".join(
            f"--- {log.name} (tail)\n{tail(log.read_text(errors='replace'), 60)}"
            for log in sorted((project / "build" / "ci").glob("*.log"))
        )
        pytest.fail(
            f"`make {' '.join(args)}` in {project} exited {result.returncode}:\n{tail(result.stdout)}\n{logs}",
            pytrace=False,
        )
    return seconds, result.stdout


def tail(output: str, lines: int = 80) -> str:
    return "\n".join(output.splitlines()[-lines:])


def answer_keys() -> list[str]:
    """The questions cookiecutter asks: every key but `__prompts__` and private `_` keys."""
    return [key for key in json.loads(COOKIECUTTER_JSON.read_text()) if not key.startswith("_")]


def render_answers(extra: dict[str, str] | None = None) -> dict[str, Any]:
    """The answers cookiecutter derives from the defaults and `extra`, as --no-input would."""
    context = generate_context(context_file=str(COOKIECUTTER_JSON), extra_context=extra or {})
    return dict(prompt_for_config(context, no_input=True))


def generate(output_dir: Path, config_file: Path, answers: dict[str, str] | None = None, **kwargs: Any) -> Path:
    """Generate in-process (never through the CLI) and return the project directory."""
    return Path(
        cookiecutter(
            str(kwargs.pop("template", ROOT)),
            no_input=True,
            extra_context=dict(answers or {}),
            output_dir=str(output_dir),
            config_file=str(config_file),
            **kwargs,
        )
    )


def _render_path(relative: str, answers: dict[str, Any]) -> str:
    env = StrictEnvironment(context={"cookiecutter": answers})
    return env.from_string(relative).render(cookiecutter=answers)


def removed_by_options(answers: dict[str, Any]) -> list[str]:
    """Paths (files or folders, relative to the project) that must not exist for these answers."""
    other = next(p for p in PROMOTIONS if p != answers["promotion"])
    removed = [f"docs/promotion-{other}.md", f".github/workflows/production-{other}.yml"]
    if answers["argocd"] == "no":
        removed.append("deploy/argocd")
    return removed


def _is_removed(relative: str, removed: list[str]) -> bool:
    return any(relative == path or relative.startswith(path + "/") for path in removed)


def template_files(answers: dict[str, Any]) -> set[str]:
    """Every file of the template tree, with its path rendered for these answers."""
    files = set()
    for path in PROJECT_TEMPLATE.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            files.add(_render_path(path.relative_to(PROJECT_TEMPLATE).as_posix(), answers))
    return files


def expected_files(answers: dict[str, Any]) -> set[str]:
    """What a generation with these answers must contain: the template tree minus the files of
    the options not chosen, plus the recorded answers."""
    removed = removed_by_options(answers)
    return {path for path in template_files(answers) if not _is_removed(path, removed)} | {".cruft.json"}


def project_files(project: Path) -> set[str]:
    """Every file of a generated project except git's own."""
    return {
        path.relative_to(project).as_posix()
        for path in project.rglob("*")
        if path.is_file() and ".git" not in path.relative_to(project).parts[:1]
    }


def text_files(project: Path) -> Iterator[tuple[str, str]]:
    """(relative path, text) of every generated text file; binary files (with NUL) are skipped."""
    for relative in sorted(project_files(project)):
        data = (project / relative).read_bytes()
        if b"\0" in data:
            continue
        yield relative, data.decode("utf-8")


def tree_digest(root: Path) -> str:
    """A content hash of a whole tree (paths, modes, bytes, symlink targets), .git included."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        stat = path.lstat()
        digest.update(f"{relative}\0{stat.st_mode:o}\0".encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def kustomize_argv() -> list[str] | None:
    """The kustomize to use: a standalone binary when present, else kubectl's embedded one."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    import yaml

    argv = kustomize_argv()
    assert argv is not None, "neither kustomize nor kubectl is on PATH"
    result = subprocess.run([*argv, str(directory)], capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, f"`{' '.join(argv)} {directory}` failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def hook_frames_outside_cookiecutter(stderr: str) -> list[str]:
    """Traceback frames that are not cookiecutter's own (cookiecutter logs its hook failure
    with a traceback; a frame anywhere else means one of our hooks crashed)."""
    frames = re.findall(r'File "([^"]+)", line \d+', stderr)
    return [frame for frame in frames if f"{os.sep}cookiecutter{os.sep}" not in frame]


def load_hook(name: str, answers: dict[str, Any] | None = None) -> ModuleType:
    """A hook rendered the way cookiecutter renders it (default answers unless given) and loaded
    as a module, without running its main()."""
    answers = answers or render_answers()
    source = (ROOT / "hooks" / f"{name}.py").read_text()
    env = StrictEnvironment(context={"cookiecutter": answers})
    module = ModuleType(name)
    module.__file__ = str(ROOT / "hooks" / f"{name}.py")
    exec(compile(env.from_string(source).render(cookiecutter=answers), module.__file__, "exec"), module.__dict__)  # noqa: S102
    return module
