"""Find the team's pipelines: `pipelines:` in config/environments.yaml names each one as
`module:function` (a kfp `@dsl.pipeline`), importable from the repository's `src/`.

The engine never imports the team's code by a fixed name; this module is the one place it
imports it at all (compile, run, diff), so replacing the example model touches no engine file.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import MlopsError

# The two pipelines the flows run; a repository may declare more (they are compiled and diffed).
REQUIRED = ("features", "training")


class PipelineLoadError(MlopsError):
    """A pipeline named in config cannot be imported; the message names the key and the target."""


def split_target(target: str, where: str) -> tuple[str, str]:
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr.isidentifier():
        raise PipelineLoadError(f"{where} is {target!r}; expected <module>:<function>, e.g. my_model.pipelines:training")
    return module, attr


def ensure_importable(root: Path) -> None:
    """Put the repository's src/ first on sys.path (an editable install does the same)."""
    src = str((root / "src").resolve())
    if src not in sys.path:
        sys.path.insert(0, src)


def load(root: Path, targets: dict[str, str]) -> dict[str, Callable[..., Any]]:
    """name -> pipeline function, in the order config declares them."""
    ensure_importable(root)
    loaded = {}
    for name, target in targets.items():
        where = f"config/environments.yaml: pipelines.{name}"
        module_name, attr = split_target(target, where)
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # the team's code failed to import: name it, keep the cause short
            raise PipelineLoadError(f"{where}: cannot import {module_name} ({type(exc).__name__}: {exc})") from exc
        func = getattr(module, attr, None)
        if func is None or not callable(func):
            raise PipelineLoadError(f"{where}: {module_name} has no pipeline function {attr!r}")
        loaded[name] = func
    return loaded


def declared_parameters(func: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The pipeline's own parameters (names, annotations, defaults), as the kfp decorator kept them."""
    wrapped = getattr(func, "pipeline_func", None) or func
    return dict(inspect.signature(wrapped).parameters)
