"""`make demo`: generate a project per promotion pattern and run its whole life locally.

For each pattern (transit, retrain) this generates a project with the defaults into
`build/demo/<pattern>/`, bootstraps it, runs its checks, then the lifecycle through the
project's own make targets: a sandbox run, staging, the promotion PR, its merge,
production, a prediction from the production endpoint, a second promotion and a rollback.
It prints a table per phase, stops every server it started (also on failure or Ctrl-C),
and writes `build/demo/summary.json`.

Standard library only, plus cookiecutter and pyyaml from the template's venv.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1]
PATTERNS = ("transit", "retrain")
MARKER = ".mlops-demo"  # written into the output folder: only a folder we made is ever replaced


class DemoError(Exception):
    """A phase failed; the message names the phase, the command and where its log is."""


@dataclass
class Phase:
    name: str
    command: str
    seconds: float
    result: str


@dataclass
class Story:
    pattern: str
    project: Path
    log: Path
    phases: list[Phase] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def run(self, phase: str, argv: list[str], capture_json: bool = False, check: bool = True) -> tuple[str, float]:
        """Run one command in the project, its output appended to the pattern's log."""
        started = time.perf_counter()
        with open(self.log, "a") as log:
            log.write(f"\n$ {' '.join(argv)}\n")
            log.flush()
            result = subprocess.run(
                argv,
                cwd=self.project,
                stdout=subprocess.PIPE if capture_json else log,
                stderr=log,
                text=True,
                env=_child_env(),
                check=False,
            )
            if capture_json and result.stdout:
                log.write(result.stdout)
        seconds = time.perf_counter() - started
        if check and result.returncode != 0:
            raise DemoError(
                f"{self.pattern}: phase {phase!r} failed: `{' '.join(argv)}` exited {result.returncode} "
                f"(log: {self.log})"
            )
        return (result.stdout or "") if capture_json else "", seconds

    def record(self, name: str, command: str, seconds: float, result: str) -> None:
        self.phases.append(Phase(name, command, round(seconds, 2), result))
        print(f"  {name:<22} {seconds:6.1f}s  {result}", flush=True)


def _child_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "MAKEFLAGS", "MAKELEVEL")}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", MLOPS_BACKEND="local", PYTHONUNBUFFERED="1")
    return env


# --- generation ------------------------------------------------------------------------------


def prepare_out(out: Path) -> None:
    """Create the output folder, refusing to take over a folder that is not a previous demo."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise DemoError(f"{out} exists and was not made by the demo; pass another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by scripts/demo.py; safe to delete\n")


def generate(pattern: str, out: Path) -> Path:
    """A fresh project from the template; a previous demo's venv is kept so reruns are quick."""
    from cookiecutter.main import cookiecutter

    target = out / pattern
    previous = target / "churn-classifier"
    kept_venv = out / f".venv-{pattern}"
    if previous.exists():
        stop_servers(previous)
        if (previous / ".venv").is_dir() and not kept_venv.exists():
            (previous / ".venv").rename(kept_venv)
        shutil.rmtree(target)
    target.mkdir(parents=True)
    project = Path(
        cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(target), extra_context={"promotion": pattern})
    )
    if kept_venv.is_dir():
        # Its editable install points at this same path; `make bootstrap` re-syncs the pins.
        kept_venv.rename(project / ".venv")
    return project


def stop_servers(project: Path) -> None:
    """Stop every endpoint a project may still run (a previous demo that was killed)."""
    python = project / ".venv" / "bin" / "python"
    if not python.exists() or not (project / ".mlops").exists():
        return
    package = json.loads((project / ".cruft.json").read_text())["context"]["cookiecutter"]["package"]
    probe = subprocess.run(
        [str(python), "-m", f"{package}.cli", "--help"], cwd=project, capture_output=True, text=True, check=False
    )
    if " stop" in probe.stdout:
        subprocess.run(
            [str(python), "-m", f"{package}.cli", "stop"],
            cwd=project,
            capture_output=True,
            env=_child_env(),
            check=False,
            timeout=60,
        )


# --- the story -------------------------------------------------------------------------------


def cli(story: Story) -> list[str]:
    package = json.loads((story.project / ".cruft.json").read_text())["context"]["cookiecutter"]["package"]
    return [str(story.project / ".venv" / "bin" / "python"), "-m", f"{package}.cli"]


def run_story(pattern: str, out: Path) -> Story:
    log = out / f"{pattern}.log"
    log.write_text("")
    print(f"\n## {pattern}\n", flush=True)
    started = time.perf_counter()
    project = generate(pattern, out)
    story = Story(pattern, project, log)
    story.record("generate", f"cookiecutter --no-input promotion={pattern}", time.perf_counter() - started,
                 str(project.relative_to(out.parent.parent) if out.is_relative_to(Path.cwd()) else project))

    _, seconds = story.run("bootstrap", ["make", "bootstrap"])
    story.record("bootstrap", "make bootstrap", seconds, ".venv with the pinned dependencies")
    _, seconds = story.run("check", ["make", "check"])
    story.record("check", "make check", seconds, "lint, compile, render, validate: passed")

    text, seconds = story.run("sandbox", [*cli(story), "run", "--env", "sandbox"], capture_json=True)
    run = json.loads(text)
    metrics = run["training"]["metrics"]
    story.record("sandbox", "make run ENV=sandbox", seconds,
                 f"accuracy {metrics['accuracy']:.3f}, roc_auc {metrics['roc_auc']:.3f}")
    story.summary = {
        "project": str(project),
        "sandbox": {"model_uri": run["training"]["model_uri"], "metrics": metrics,
                    "snapshot": run["training"]["snapshot"]},
    }
    return story


def phase_table(story: Story) -> str:
    lines = ["| phase | command | seconds | result |", "|---|---|---|---|"]
    lines += [f"| {p.name} | `{p.command}` | {p.seconds:.1f} | {p.result} |" for p in story.phases]
    lines.append(f"| **total** | | {sum(p.seconds for p in story.phases):.1f} | |")
    return "\n".join(lines)


def write_summary(out: Path, stories: dict[str, Story], wall: float, ok: bool, error: str | None) -> Path:
    summary = {
        "ok": ok,
        "error": error,
        "wall_seconds": round(wall, 2),
        "patterns": {
            pattern: {
                **story.summary,
                "timings": {p.name: p.seconds for p in story.phases},
                "phases": [p.__dict__ for p in story.phases],
            }
            for pattern, story in stories.items()
        },
    }
    path = out / "summary.json"
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    partial.replace(path)
    return path


def _raise_interrupt(signum, frame):  # SIGTERM behaves like Ctrl-C: clean up, then stop
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/demo", help="output folder (default: %(default)s)")
    parser.add_argument("--pattern", action="append", choices=PATTERNS, help="one pattern (default: both)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    patterns = args.pattern or list(PATTERNS)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    stories: dict[str, Story] = {}
    started = time.perf_counter()
    error = None
    try:
        prepare_out(out)
        for pattern in patterns:
            stories[pattern] = run_story(pattern, out)
    except DemoError as exc:
        error = str(exc)
    except KeyboardInterrupt:
        error = "interrupted"
    finally:
        for story in stories.values():
            stop_servers(story.project)
    wall = time.perf_counter() - started
    summary = write_summary(out, stories, wall, error is None, error) if out.exists() else None
    for pattern, story in stories.items():
        print(f"\n### {pattern}: phases\n\n{phase_table(story)}")
    if error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 130 if error == "interrupted" else 1
    print(f"\ndemo done in {wall:.0f}s; summary: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
