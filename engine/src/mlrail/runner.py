"""Run the pipelines in one environment.

The local backend runs the very same pipeline functions with kfp.local's SubprocessRunner in
the current interpreter (the project venv plays the project image); each environment keeps
its runs under .mlops/<env>/pipeline-root, apart from every other environment.

Parameters are data (config `features.parameters` / `training.parameters`, per-environment
overrides, `--param`): checked against the pipeline function's declared parameters before any
run, cast to their declared types, completed with the declared defaults and recorded in full.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from .config import Environment
from .pipelines import resolve_parameters
from .runs import FeatureRun, PipelineRunError, TrainingRun


@contextlib.contextmanager
def _quiet_kfp(log_path: Path):
    """kfp.local streams every executor line to stdout; keep it in a log file instead."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        saved = os.dup(1), os.dup(2)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _init_local(env: Environment) -> None:
    from kfp import local

    env.pipeline_root.mkdir(parents=True, exist_ok=True)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(env.pipeline_root),
        raise_on_error=True,
    )
    logging.getLogger("kfp").setLevel(logging.WARNING)


def _run_local(env: Environment, name: str, pipeline, **arguments):
    _init_local(env)
    log_path = env.local_dir / "logs" / f"{name}.log"
    try:
        with _quiet_kfp(log_path), warnings.catch_warnings():
            # The local runner ignores resource limits and the base image by design.
            warnings.filterwarnings("ignore", module=r"kfp\.local\..*")
            return pipeline(**arguments)
    except Exception as exc:  # kfp raises RuntimeError with the failing task; keep it short
        raise PipelineRunError(
            f"{name} pipeline failed in {env.name}: {str(exc).splitlines()[0]} (full log: {log_path})"
        ) from exc


def bind(pipelines: dict, name: str, parameters: dict[str, Any], sources: dict[str, str] | None = None) -> dict:
    """The full, typed parameter set for one run of pipeline `name` (PipelineParameterError if a
    name is unknown or a value is not of the declared type)."""
    target = pipelines.target(name) if hasattr(pipelines, "target") else name
    return resolve_parameters(pipelines[name], parameters, pipeline=name, target=target, sources=sources)


def run_features(
    env: Environment, pipelines: dict, parameters: dict[str, Any], package: Path | str | None = None
) -> FeatureRun:
    """Run the feature pipeline and return where its snapshot is. `package`: the compiled pipeline
    the caller already compiled (cluster: uploaded as is, not compiled again)."""
    parameters = bind(pipelines, "features", parameters)
    if env.backend == "cluster":
        from .cluster import kfp_api

        return kfp_api.run_features(env, pipelines, parameters, package=package)
    started = time.perf_counter()
    task = _run_local(env, "features", pipelines["features"], **parameters)
    dataset = task.output
    return FeatureRun(
        env=env.name,
        features_uri=dataset.uri,
        snapshot=dataset.metadata.get("snapshot") or _snapshot(dataset.uri),
        rows=int(dataset.metadata.get("rows", 0)),
        seconds=round(time.perf_counter() - started, 3),
        params=parameters,
    )


def run_training(
    env: Environment,
    pipelines: dict,
    features_uri: str,
    parameters: dict[str, Any],
    package: Path | str | None = None,
) -> TrainingRun:
    """Run the training pipeline on a feature snapshot; returns the model and its metrics."""
    parameters = bind(pipelines, "training", parameters)
    if env.backend == "cluster":
        from .cluster import kfp_api

        return kfp_api.run_training(env, pipelines, features_uri, parameters, package=package)
    if not Path(features_uri).exists():
        raise PipelineRunError(f"features_uri {features_uri!r} does not exist in {env.name}")
    started = time.perf_counter()
    task = _run_local(env, "training", pipelines["training"], features_uri=features_uri, **parameters)
    model, metrics = task.outputs["model"], task.outputs["metrics"]
    return TrainingRun(
        env=env.name,
        features_uri=features_uri,
        model_uri=model.uri,
        metrics=json.loads(Path(metrics.uri).read_text()),
        snapshot=_snapshot(features_uri),
        params=parameters,
        seconds=round(time.perf_counter() - started, 3),
    )


def _snapshot(features_uri: str) -> str:
    """The data snapshot recorded with every model: the content hash of the features artifact."""
    import hashlib

    return "sha256:" + hashlib.sha256(Path(features_uri).read_bytes()).hexdigest()
