"""Core commands: compile, render, validate, run, check-config, config-schema."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Literal

import typer

from ._app import EnvOptional, EnvRequired, ParamOption, command, load_config, parameters


def resolve_out(root: Path, out: str) -> Path:
    """An output folder: relative to the repository root, or absolute as given."""
    path = Path(out).expanduser()
    return path if path.is_absolute() else root / path


def shown(root: Path, path: Path) -> str:
    """A path for output: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def project_image(cfg, image_digest: str | None) -> str | None:
    """`<cfg.image>@<digest>`: the pushed image digest when given, else the source digest."""
    from .. import source
    from ..console import progress

    try:
        return source.project_image(cfg.image, cfg.root, image_digest=image_digest)
    except source.SourceError as exc:
        if image_digest:
            raise
        progress(f"compiling without a project image digest ({exc})")
        return None


@command("compile", "compile every pipeline to YAML")
def compile_cmd(
    out: Annotated[str, typer.Option(help="output folder, relative to the repository or absolute")] = "build/pipelines",
    image_digest: Annotated[
        str | None, typer.Option(help="the pushed project image's digest (CI); default: the source digest")
    ] = None,
) -> int:
    from ..compile import compile_all, pipeline_version
    from ..console import table

    cfg = load_config()
    out_dir = resolve_out(cfg.root, out)
    pipelines = cfg.load_pipelines(image=project_image(cfg, image_digest))
    rows = [
        {"pipeline": name, "file": shown(cfg.root, path), "version": pipeline_version(path)[:19]}
        for name, path in compile_all(pipelines, out_dir).items()
    ]
    print(table(rows, ["pipeline", "file", "version"]))
    return 0


def _selected_overlays(cfg, env: str | None) -> dict[str, Path]:
    from .. import kustomize
    from ..errors import MlopsError

    overlays = kustomize.overlay_dirs(cfg.root)
    if env is None:
        return overlays
    if env not in overlays:
        raise MlopsError(f"--env {env!r} has no overlay; expected one of {', '.join(overlays)}")
    return {env: overlays[env]}


@command("render", "render overlays with kustomize into build/rendered/")
def render_cmd(
    env: EnvOptional = None,
    out: Annotated[str, typer.Option(help="output folder, relative to the repository or absolute")] = "build/rendered",
) -> int:
    from .. import kustomize
    from ..console import progress
    from ..fsutil import atomic_write_text

    cfg = load_config()
    out_dir = resolve_out(cfg.root, out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, directory in _selected_overlays(cfg, env).items():
        target = atomic_write_text(out_dir / f"{name}.yaml", kustomize.render(directory))
        progress(f"rendered {shown(cfg.root, directory)} -> {shown(cfg.root, target)}")
    return 0


@command("validate", "validate rendered overlays: strict schema and security policy")
def validate_cmd(env: EnvOptional = None) -> int:
    from .. import kustomize, validate
    from ..console import table

    cfg = load_config()
    findings, rows = [], []
    for name, directory in _selected_overlays(cfg, env).items():
        docs = kustomize.render_documents(directory)
        found = validate.validate_overlay(name, docs, cfg.kubernetes_version)
        findings += found
        rows.append({"overlay": name, "resources": len(docs), "findings": len(found)})
    print(table(rows, ["overlay", "resources", "findings"]))
    for finding in findings:
        print(f"  ✗ {finding}")
    if findings:
        print(f"error: {len(findings)} finding(s) in the rendered overlays", file=sys.stderr)
        return 1
    print(f"all overlays valid for Kubernetes {cfg.kubernetes_version} (strict schema + restricted policy)")
    return 0


@command("run", "run the feature and/or training pipeline in one environment")
def run_cmd(
    env: EnvRequired,
    pipeline: Annotated[Literal["features", "training", "all"], typer.Option(help="which pipeline(s)")] = "all",
    features_uri: Annotated[
        str | None, typer.Option(help="feature snapshot to train on (with --pipeline training)")
    ] = None,
    param: ParamOption = None,
) -> int:
    from .. import runner
    from ..console import progress
    from ..errors import MlopsError

    cfg = load_config()
    environment = cfg.env(env)
    overrides = parameters(param)
    pipelines = cfg.load_pipelines()
    # Check the training parameters before the feature pipeline spends any time.
    sources = {**cfg.parameter_sources("training", env), **{name: f"--param {name}" for name in overrides}}
    training_params = runner.bind(pipelines, "training", {**cfg.parameters("training", env), **overrides}, sources)
    result: dict = {"env": environment.name}
    if pipeline in ("features", "all"):
        progress(f"{environment.name}: running the feature pipeline")
        features = runner.run_features(environment, pipelines, cfg.parameters("features", env))
        result["features"] = features.__dict__
        features_uri = features.features_uri
    elif not features_uri:
        raise MlopsError("--features-uri is required with --pipeline training (a feature snapshot path)")
    if pipeline in ("training", "all"):
        progress(f"{environment.name}: running the training pipeline")
        training = runner.run_training(environment, pipelines, features_uri, training_params)
        result["training"] = json.loads(training.to_json())
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


@command("check-config", "validate config/environments.yaml: schema, then each pipeline's parameters")
def check_config_cmd(
    schema_only: Annotated[
        bool, typer.Option("--schema-only", help="only the schema (does not import the team's pipelines)")
    ] = False,
) -> int:
    from .. import config, runner
    from ..pipelines import PipelineParameterError

    try:
        cfg = config.load()
    except config.ConfigError as exc:
        for problem in exc.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 1
    checked = ["schema"]
    if not schema_only:
        pipelines = cfg.load_pipelines()
        problems = []
        for name in pipelines:
            for env in config.ENVIRONMENTS:
                try:
                    runner.bind(pipelines, name, cfg.parameters(name, env), cfg.parameter_sources(name, env))
                except PipelineParameterError as exc:
                    if str(exc) not in problems:
                        problems.append(str(exc))
        for problem in problems:
            print(f"error: {config.CONFIG_FILE}: {problem}", file=sys.stderr)
        if problems:
            return 1
        checked.append("the parameters of " + " and ".join(f"{n} ({pipelines.target(n)})" for n in pipelines))
    print(f"{config.CONFIG_FILE} is valid: {', '.join(checked)}")
    return 0


@command("config-schema", "print the JSON Schema of config/environments.yaml")
def config_schema_cmd() -> int:
    from .. import config

    print(config.schema_text(), end="")
    return 0
