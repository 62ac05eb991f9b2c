"""Fixtures of the template tests. Generation always runs in-process (cookiecutter's API or
pytest-cookies), with its own cookiecutter config and a git without the user's settings."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from template_support import ROOT, VARIANTS, generate, render_answers


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "deep: generates a project and runs its own `make bootstrap check test` (slow)")
    # pytest-cookies bakes whatever --template names (default: the current directory); these
    # tests describe this template, wherever pytest is started from.
    config.option.template = str(ROOT)


@pytest.fixture(scope="session", autouse=True)
def isolated_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The same git on every machine: no global or system config (no identity, no signing,
    no init templates), so the post-gen hook's own fallbacks are what runs."""
    gitconfig = tmp_path_factory.mktemp("git") / "gitconfig"
    gitconfig.write_text("")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
        patch.setenv("GIT_CONFIG_NOSYSTEM", "1")
        patch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        for name in (
            "GIT_DIR",
            "GIT_WORK_TREE",
            "GIT_INDEX_FILE",
            "GIT_AUTHOR_NAME",
            "GIT_AUTHOR_EMAIL",
            "GIT_COMMITTER_NAME",
            "GIT_COMMITTER_EMAIL",
            "EMAIL",
        ):
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(scope="session")
def cookiecutter_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private cookiecutter config: replay files and clones stay out of the user's home."""
    folder = tmp_path_factory.mktemp("cookiecutter-user")
    config = folder / "config.yaml"
    config.write_text(
        yaml.safe_dump({"cookiecutters_dir": str(folder / "cookiecutters"), "replay_dir": str(folder / "replay")})
    )
    return config


@pytest.fixture()
def make_project(tmp_path: Path, cookiecutter_config: Path) -> Callable[..., Path]:
    """Generate a fresh, private project: `make_project(promotion="retrain", ...)`."""

    def make(output_dir: Path | None = None, **answers: Any) -> Path:
        return generate(output_dir or tmp_path / "out", cookiecutter_config, answers)

    return make


class Baked:
    """A generated project shared read-only by the tests of one worker."""

    def __init__(self, name: str, path: Path, answers: dict[str, Any]) -> None:
        self.name = name
        self.path = path
        self.answers = answers

    def __repr__(self) -> str:
        return f"<Baked {self.name} at {self.path}>"


@pytest.fixture(scope="session")
def baked_variants(cookies_session: Any) -> Callable[[str], Baked]:
    """Bake each variant of VARIANTS once per worker through pytest-cookies; tests must not
    modify the tree they get."""
    cache: dict[str, Baked] = {}

    def get(name: str) -> Baked:
        if name not in cache:
            extra = VARIANTS[name]
            result = cookies_session.bake(extra_context=dict(extra))
            if result.exception is not None or result.exit_code != 0:
                error = result.exception
                # cookiecutter's template errors carry the whole context in their repr: show the cause
                detail = f"{getattr(error, 'message', error)} ({getattr(error, 'error', '')})"
                if getattr(error, "filename", None):  # jinja2's syntax errors name the template file
                    detail += f" in {error.filename}:{error.lineno}"
                pytest.fail(f"variant {name} did not generate: {type(error).__name__}: {detail}", pytrace=False)
            cache[name] = Baked(name, result.project_path, render_answers(extra))
        return cache[name]

    return get


@pytest.fixture(params=sorted(VARIANTS))
def baked(request: pytest.FixtureRequest, baked_variants: Callable[[str], Baked]) -> Baked:
    return baked_variants(request.param)


def pytest_report_header(config: pytest.Config) -> str:
    return f"template: {ROOT} (git config isolated: no global/system settings)"
