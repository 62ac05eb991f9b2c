"""Compile every pipeline to YAML. The content hash of a compiled file is its pipeline version:
the retrain pattern runs in production only the version that passed staging."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any


def pipeline_version(path: Path | str) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def compile_all(pipelines: dict[str, Callable[..., Any]], out_dir: Path | str) -> dict[str, Path]:
    """Compile each pipeline atomically (temp file, then rename): no half-written YAML."""
    from kfp import compiler

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, pipeline in pipelines.items():
        target = out_dir / f"{name}.yaml"
        partial = out_dir / f".{name}.partial.yaml"  # kfp insists on a .yaml suffix
        compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(partial))
        partial.replace(target)
        written[name] = target
    return written
