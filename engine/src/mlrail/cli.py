"""The one entry point used by make, CI and people: `mlrail <command>`.

Each command is a thin handler over one module (pipelines, runner, kustomize, validate, ...).
Results go to stdout, progress to stderr; a user mistake is one line and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from . import config as config_mod
from .commands import AREAS
from .console import progress, table
from .errors import MlopsError
from .fsutil import atomic_write_text

Handler = Callable[[argparse.Namespace, config_mod.Config], int]


# --- commands ---------------------------------------------------------------------------


def cmd_compile(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from .compile import compile_all, pipeline_version

    out_dir = cfg.root / args.out
    rows = []
    for name, path in compile_all(cfg.load_pipelines(), out_dir).items():
        rows.append({"pipeline": name, "file": path.relative_to(cfg.root), "version": pipeline_version(path)[:19]})
    print(table(rows, ["pipeline", "file", "version"]))
    return 0


def cmd_render(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from . import kustomize

    out_dir = cfg.root / args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, directory in _selected_overlays(cfg, args.env).items():
        target = atomic_write_text(out_dir / f"{name}.yaml", kustomize.render(directory))
        progress(f"rendered {directory.relative_to(cfg.root)} -> {target.relative_to(cfg.root)}")
    return 0


def cmd_validate(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from . import kustomize, validate

    findings, rows = [], []
    for name, directory in _selected_overlays(cfg, args.env).items():
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


def cmd_run(args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from . import runner

    env = cfg.env(args.env)
    result: dict = {"env": env.name}
    if args.pipeline in ("features", "all"):
        progress(f"{env.name}: running the feature pipeline")
        pipelines = cfg.load_pipelines()
        features = runner.run_features(env, pipelines)
        result["features"] = features.__dict__
        features_uri = features.features_uri
    else:
        features_uri = args.features_uri
        if not features_uri:
            raise MlopsError("--features-uri is required with --pipeline training (a feature snapshot path)")
    if args.pipeline in ("training", "all"):
        progress(f"{env.name}: running the training pipeline")
        training = runner.run_training(env, cfg.load_pipelines(), features_uri, c=args.c)
        result["training"] = json.loads(training.to_json())
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


# --- wiring -----------------------------------------------------------------------------


def _selected_overlays(cfg: config_mod.Config, env: str | None) -> dict[str, Path]:
    from . import kustomize

    overlays = kustomize.overlay_dirs(cfg.root)
    if env is None:
        return overlays
    if env not in overlays:
        raise MlopsError(f"--env {env!r} has no overlay; expected one of {', '.join(overlays)}")
    return {env: overlays[env]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlrail", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    sub = add("compile", cmd_compile, "compile every pipeline to YAML")
    sub.add_argument("--out", default="build/pipelines", help="output folder (default: %(default)s)")

    sub = add("render", cmd_render, "render overlays with kustomize into build/rendered/")
    sub.add_argument("--env", choices=config_mod.ENVIRONMENTS, help="one overlay (default: all)")
    sub.add_argument("--out", default="build/rendered", help="output folder (default: %(default)s)")

    sub = add("validate", cmd_validate, "validate rendered overlays: strict schema and security policy")
    sub.add_argument("--env", choices=config_mod.ENVIRONMENTS, help="one overlay (default: all)")

    sub = add("run", cmd_run, "run the feature and/or training pipeline in one environment")
    sub.add_argument("--env", required=True, choices=config_mod.ENVIRONMENTS)
    sub.add_argument("--pipeline", choices=("features", "training", "all"), default="all")
    sub.add_argument("--features-uri", help="feature snapshot to train on (with --pipeline training)")
    sub.add_argument("--c", type=float, default=1.0, help="regularisation strength (default: %(default)s)")

    for area in AREAS:
        importlib.import_module(f".commands.{area}", __package__).register(add)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    try:
        cfg = config_mod.load()
        code = args.handler(args, cfg)
    except MlopsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun the same command; every step resumes where it stopped", file=sys.stderr)
        return 130
    progress(f"{args.command} done in {time.perf_counter() - started:.1f}s")
    return code


if __name__ == "__main__":
    sys.exit(main())
