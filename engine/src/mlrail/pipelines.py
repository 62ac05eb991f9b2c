"""Find the team's pipelines: `pipelines:` in config/environments.yaml names each one as
`module:function` (a kfp `@dsl.pipeline`), importable from the repository's `src/`.

The engine never imports the team's code by a fixed name; this module is the one place it
imports it at all (compile, run, diff), so replacing the example model touches no engine file.

Parameters are data: whatever names the pipeline function declares, with the types its
annotations give (int, float, bool, str, list, dict). `resolve_parameters` checks the names,
casts the values (strings from `--param NAME=VALUE` included) and fills the declared defaults,
so a run records the full set it ran with.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .errors import MlopsError

# The two pipelines the flows run; a repository may declare more (they are compiled and diffed).
REQUIRED = ("features", "training")
IMAGE_VAR = "PROJECT_IMAGE"  # = mlrail.source.IMAGE_VAR, the name the team's components read
# Arguments the engine supplies itself, so they are not parameters a team sets.
INPUTS: dict[str, tuple[str, ...]] = {"training": ("features_uri",)}


class PipelineLoadError(MlopsError):
    """A pipeline named in config cannot be imported; the message names the key and the target."""


class PipelineParameterError(MlopsError):
    """A parameter the pipeline does not declare, or a value not of its declared type."""


class Pipelines(dict):
    """name -> pipeline function, remembering each one's `module:function` for messages."""

    def __init__(self, functions: Mapping[str, Callable[..., Any]], targets: Mapping[str, str]):
        super().__init__(functions)
        self.targets = dict(targets)

    def target(self, name: str) -> str:
        return self.targets.get(name, name)


def split_target(target: str, where: str) -> tuple[str, str]:
    module, sep, attr = target.partition(":")
    if not sep or not module or not attr.isidentifier():
        raise PipelineLoadError(
            f"{where} is {target!r}; expected <module>:<function>, e.g. my_model.pipelines:training"
        )
    return module, attr


def ensure_importable(root: Path) -> None:
    """Put the repository's src/ first on sys.path (an editable install does the same)."""
    src = str((root / "src").resolve())
    if src not in sys.path:
        sys.path.insert(0, src)


def load(root: Path, targets: dict[str, str], image: str | None = None) -> Pipelines:
    """name -> pipeline function, in the order config declares them.

    `image` (`<image>@sha256:...`, see mlrail.source) is set as PROJECT_IMAGE before the team's
    modules are imported: components read it at import as their base image, so the compiled
    pipelines name the released code. Modules imported earlier with another image are imported again.
    """
    ensure_importable(root)
    if image is not None and os.environ.get(IMAGE_VAR) != image:
        os.environ[IMAGE_VAR] = image
        packages = {target.partition(":")[0].split(".")[0] for target in targets.values()}
        for name in [m for m in sys.modules if m.split(".")[0] in packages]:
            del sys.modules[name]
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
    return Pipelines(loaded, targets)


def declared_parameters(func: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The pipeline's own parameters (names, annotations, defaults), as the kfp decorator kept them."""
    wrapped = getattr(func, "pipeline_func", None) or func
    return dict(inspect.signature(wrapped).parameters)


def _annotations(func: Callable[..., Any]) -> dict[str, Any]:
    wrapped = getattr(func, "pipeline_func", None) or func
    try:
        return typing.get_type_hints(wrapped)
    except Exception:  # unresolvable string annotations: fall back to what the signature holds
        return {name: p.annotation for name, p in inspect.signature(wrapped).parameters.items()}


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def cast_value(value: Any, annotation: Any, label: str) -> Any:
    """`value` as the declared `annotation`; strings (from the command line) are parsed.

    A value of another type is an error naming `label`, never silently converted (except an
    integer for a float)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return value
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        if optional and (value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null"))):
            return None
        for member in members:
            with contextlib.suppress(PipelineParameterError):
                return cast_value(value, member, label)
        raise PipelineParameterError(f"{label} is {value!r}; expected {_type_name(annotation)}")
    base = origin or annotation
    expected = _type_name(base)

    given = value  # as written, for the message

    def wrong(form: str) -> PipelineParameterError:
        return PipelineParameterError(f"{label} is {given!r}; expected {form}")

    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise wrong("a bool (true or false)")
    if base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise wrong("an int")
    if base is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise wrong("a float")
    if base is str:
        if isinstance(value, str):
            return value
        raise wrong("a str (quote it in YAML)")
    if base in (list, dict):
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                example = "[1, 2]" if base is list else '{"a": 1}'
                raise wrong(f"a {expected} written as JSON, e.g. {example}") from None
        if not isinstance(value, base):
            raise wrong(f"a {expected}")
        return value
    return value  # a type the engine does not know (e.g. a kfp artifact input): the pipeline decides


def resolve_parameters(
    func: Callable[..., Any],
    given: Mapping[str, Any],
    *,
    pipeline: str,
    target: str | None = None,
    sources: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The full parameter set of one run: `given` checked against the pipeline's declared
    parameters (minus the engine's own inputs), cast to their types, declared defaults filled in.

    `sources` names where each given value came from (a config key, `--param NAME`) for errors;
    the default is `<pipeline>.parameters.<name>`."""
    target = target or pipeline
    sources = sources or {}
    inputs = INPUTS.get(pipeline, ())
    declared = {name: p for name, p in declared_parameters(func).items() if name not in inputs}
    names = ", ".join(declared) or "no parameters"
    for name in given:
        if name not in declared:
            where = sources.get(name, f"{pipeline}.parameters.{name}")
            raise PipelineParameterError(f"{where} is not a parameter of {target}; it takes {names}")
    annotations = _annotations(func)
    resolved: dict[str, Any] = {}
    for name, parameter in declared.items():
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        annotation = annotations.get(name, parameter.annotation)
        if name in given:
            where = sources.get(name, f"{pipeline}.parameters.{name}")
            resolved[name] = cast_value(given[name], annotation, where)
        elif parameter.default is not inspect.Parameter.empty:
            resolved[name] = parameter.default
        else:
            raise PipelineParameterError(
                f"{target} requires the parameter {name} ({_type_name(annotation)}), which has no default: "
                f"set {pipeline}.parameters.{name} in config/environments.yaml"
            )
    return resolved


def parse_assignments(pairs: list[str] | None, option: str = "--param") -> dict[str, str]:
    """`NAME=VALUE` strings (repeatable options) -> {name: value}; the value stays a string
    until `resolve_parameters` casts it to the declared type."""
    parsed: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, value = pair.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise PipelineParameterError(f"{option} {pair!r} is not of the form NAME=VALUE, e.g. {option} seed=7")
        parsed[name] = value
    return parsed
