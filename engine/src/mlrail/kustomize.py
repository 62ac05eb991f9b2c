"""Render kustomize overlays with whichever kustomize is present.

A standalone `kustomize` binary wins (GitHub's runners have it); otherwise `kubectl kustomize`,
which embeds kustomize v5. Neither present is one clear error.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from .errors import MlopsError

KUSTOMIZE_VAR = "KUSTOMIZE"  # set to a binary path to force one
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")  # kustomize accepts each
# kubectl prefixes errors with a klog header (timestamp, pid) and wraps them: keep the message only.
_KLOG = re.compile(r'^[EWIF]\d{4} [\d:.]+\s+\d+ \S+\] "command failed" err="(?P<msg>.*)"$', re.DOTALL)


class KustomizeError(MlopsError):
    """kustomize is missing or an overlay does not build; the message says which and why."""


@functools.cache
def command() -> tuple[str, ...]:
    """The argv prefix that renders a kustomization directory."""
    forced = os.environ.get(KUSTOMIZE_VAR)
    if forced:
        if not shutil.which(forced):
            raise KustomizeError(f"{KUSTOMIZE_VAR}={forced!r} is not an executable on PATH")
        return (forced, "build")
    if shutil.which("kustomize"):
        return ("kustomize", "build")
    if shutil.which("kubectl"):
        return ("kubectl", "kustomize")
    raise KustomizeError(
        "neither `kustomize` nor `kubectl` is on PATH: install kustomize v5 "
        "(https://kubectl.docs.kubernetes.io/installation/kustomize/) or kubectl >= 1.27"
    )


def render(directory: Path | str, timeout: float = 120) -> str:
    """Build one kustomization directory and return the YAML stream."""
    directory = Path(directory)
    if not has_kustomization(directory):
        raise KustomizeError(f"{directory} has no kustomization.yaml")
    result = subprocess.run([*command(), str(directory)], capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        message = result.stderr.strip() or result.stdout.strip() or f"exit code {result.returncode}"
        klog = _KLOG.match(message)
        if klog:
            message = klog["msg"].replace('\\"', '"')
        raise KustomizeError(f"kustomize failed for {directory}: {message}")
    return result.stdout


def render_documents(directory: Path | str) -> list[dict]:
    """Build one kustomization directory and parse it into resource documents."""
    return [doc for doc in yaml.safe_load_all(render(directory)) if doc]


def has_kustomization(directory: Path) -> bool:
    return any((directory / name).is_file() for name in KUSTOMIZATION_FILES)


def overlay_dirs(root: Path) -> dict[str, Path]:
    """Every overlay under deploy/overlays, by name (none when the folder does not exist)."""
    base = root / "deploy" / "overlays"
    if not base.is_dir():
        return {}
    return {child.name: child for child in sorted(base.iterdir()) if has_kustomization(child)}
