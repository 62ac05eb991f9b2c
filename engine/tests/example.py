"""The example team repository the engine's tests run against: generated once per test process
from the template beside the engine (default answers), its `src/` made importable here and in
the pipeline steps kfp.local starts as subprocesses."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[2]
PROJECT = "churn-classifier"
PACKAGE = "churn_classifier"


def _generate() -> Path:
    from cookiecutter.main import cookiecutter

    out = Path(tempfile.mkdtemp(prefix="mlrail-example-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    root = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(out), accept_hooks=True))
    src = str(root / "src")
    sys.path.insert(0, src)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    return root


ROOT = _generate()
