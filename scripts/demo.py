"""`make demo`: generate a project per promotion pattern and run the whole life of a model locally.

For each pattern (transit, retrain) this generates a project with the default answers into
`build/demo/<pattern>/`, bootstraps it, runs its checks, then the lifecycle through the
engine's CLI, `mlrail` (each command is what one `make` target runs): a sandbox run, staging (train,
register, test endpoint, smoke test, gates, promotion PR), the merge of the promotion PR,
production (transit: copy; retrain: retrain, then merge the deployment PR), a prediction from the
production endpoint over HTTP, a second promotion, and a rollback to the first model (revert PR,
merge, production reconcile).

Both patterns run side by side (one thread each: every step is a subprocess, so two cores are
used). Projects bootstrap against the engine wheel built from `engine/` (ENGINE_WHEELS, built
by `make engine` when not given): what is demonstrated is what ships.

It prints a table per phase with timings, stops every server it started (also on failure or
Ctrl-C), and writes `build/demo/summary.json`. Running it again replaces the previous demo (its
virtualenv is kept, so reruns skip most of the install). Standard library only, plus
cookiecutter from the template's venv.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parents[1]
PATTERNS = ("transit", "retrain")
MARKER = ".mlops-demo"  # written into the output folder: only a folder the demo made is ever replaced
SECOND_CANDIDATE = "c=0.5"  # a second model (other regularisation) that passes the gates
ENGINE_DIST = TEMPLATE / "build" / "engine-dist"
# The served model's own input example as an Open Inference Protocol v2 request (what the
# project README shows and the smoke test sends), read with the project's engine.
INPUT_EXAMPLE = (
    "import sys; from mlrail import artifacts, config, serving; cfg = config.load(); env = cfg.env(sys.argv[1]); "
    "model = serving.declared_model(cfg, env); "
    "print(serving.input_example(artifacts.ArtifactStore(env).local_path(model.storage_uri)).model_dump_json())"
)
_PRINT = threading.Lock()
_GENERATING = threading.Lock()
STOPPING = threading.Event()  # set on Ctrl-C / SIGTERM: no story starts another command
_RUNNING: set[subprocess.Popen] = set()
# Phases whose time the overhead ratio compares with the time spent inside training, registry
# calls and server start-up (setup phases — generate, bootstrap, check — are excluded).
LIFECYCLE_PHASES = (
    "sandbox",
    "staging",
    "promotion PR",
    "merge",
    "production",
    "predict",
    "second promotion",
    "rollback",
)


class DemoError(Exception):
    """A phase failed; the message names the pattern, the phase, the command and the log."""


@dataclass
class Phase:
    name: str
    command: str
    seconds: float
    result: str
    inner: dict[str, float] = field(default_factory=dict)  # training / registry / serving seconds


@dataclass
class Story:
    pattern: str
    out: Path
    log: Path
    project: Path | None = None
    phases: list[Phase] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    # --- running commands ------------------------------------------------------------------

    def run(self, phase: str, argv: list[str]) -> tuple[str, float]:
        """Run a command in the project; stdout is returned, everything is appended to the log."""
        if STOPPING.is_set():
            raise DemoError(f"{self.pattern}: interrupted before phase {phase!r}")
        started = time.perf_counter()
        with open(self.log, "a") as log:
            log.write(f"\n$ {' '.join(argv)}\n")
            log.flush()
            process = subprocess.Popen(
                argv, cwd=self.project, stdout=subprocess.PIPE, stderr=log, text=True, env=child_env()
            )
            _RUNNING.add(process)
            try:
                stdout, _ = process.communicate()
            finally:
                _RUNNING.discard(process)
            log.write(stdout)
        seconds = time.perf_counter() - started
        result = subprocess.CompletedProcess(argv, process.returncode, stdout)
        if result.returncode != 0:
            raise DemoError(
                f"{self.pattern}: phase {phase!r} failed: `{' '.join(argv)}` exited {result.returncode} "
                f"(full output: {self.log})"
            )
        return result.stdout, seconds

    def cli(self, phase: str, *args: str) -> tuple[dict | list, float]:
        """One engine command with --json (what the make target of the same name runs)."""
        out, seconds = self.run(phase, [str(self.project / ".venv" / "bin" / "mlrail"), *args, "--json"])
        return json.loads(out), seconds

    def make(self, phase: str, target: str) -> float:
        return self.run(phase, ["make", target])[1]

    def record(self, name: str, command: str, seconds: float, result: str, *reports: dict) -> None:
        inner = {key: 0.0 for key in ("training", "registry", "serving")}
        for report in reports:
            for key in inner:
                inner[key] += float(report.get("timings", {}).get(key, 0.0))
        phase = Phase(name, command, round(seconds, 2), result, {k: round(v, 3) for k, v in inner.items()})
        self.phases.append(phase)
        with _PRINT:
            print(f"  {self.pattern:<8} {name:<17} {seconds:6.1f}s  {result}", flush=True)


def child_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("VIRTUAL_ENV", "MAKE", "MFLAGS"))}
    for key in ("MLOPS_FAULT", "MLOPS_LOCAL_ROOT"):
        env.pop(key, None)
    env.update(MLFLOW_DISABLE_TELEMETRY="true", MLOPS_BACKEND="local", PYTHONUNBUFFERED="1")
    env["ENGINE_WHEELS"] = str(engine_wheels())
    return env


def engine_wheels() -> Path:
    """The folder with the engine wheel: ENGINE_WHEELS (`make demo` builds it), else built now."""
    if os.environ.get("ENGINE_WHEELS"):
        return Path(os.environ["ENGINE_WHEELS"]).resolve()
    with _PRINT:
        if not any(ENGINE_DIST.glob("mlrail-*.whl")) or not os.environ.get("_DEMO_ENGINE_BUILT"):
            result = subprocess.run(
                ["make", "--no-print-directory", "-C", str(TEMPLATE), "engine"],
                capture_output=True,
                text=True,
                check=False,
                timeout=300,
            )
            if result.returncode != 0:
                raise DemoError(f"building the engine wheel failed (`make engine`):\n{result.stdout}{result.stderr}")
            os.environ["_DEMO_ENGINE_BUILT"] = "1"
    return ENGINE_DIST


# --- generation ------------------------------------------------------------------------------


def prepare_out(out: Path) -> None:
    """Create the output folder, refusing to take over a folder that is not a previous demo."""
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise DemoError(f"{out} exists and was not made by the demo; pass another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by scripts/demo.py; safe to delete\n")


def generate(story: Story) -> Path:
    """A fresh project; a previous demo's venv is moved aside and back so reruns install little."""
    from cookiecutter.main import cookiecutter

    with _GENERATING:  # cookiecutter changes the process's working directory while it runs hooks
        return _generate(story, cookiecutter)


def _generate(story: Story, cookiecutter) -> Path:
    target = story.out / story.pattern
    kept_venv = story.out / f".venv-{story.pattern}"
    for previous in target.glob("*/.cruft.json"):
        stop_servers(previous.parent)
        if (previous.parent / ".venv").is_dir() and not kept_venv.exists():
            (previous.parent / ".venv").rename(kept_venv)
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    project = Path(
        cookiecutter(
            str(TEMPLATE),
            no_input=True,
            output_dir=str(target),
            extra_context={"promotion": story.pattern},
            # The template's defaults, whatever ~/.cookiecutterrc says (COOKIECUTTER_CONFIG still wins).
            default_config=not os.environ.get("COOKIECUTTER_CONFIG"),
        )
    )
    if kept_venv.is_dir():
        # Its editable install points at this same path; `make bootstrap` re-syncs the pins.
        kept_venv.rename(project / ".venv")
    return project


def stop_servers(project: Path) -> None:
    """Stop every endpoint a project runs (the project's `make stop`); quiet when none runs."""
    engine = project / ".venv" / "bin" / "mlrail"
    if not engine.exists() or not (project / ".mlops").exists():
        return
    subprocess.run(
        [str(engine), "stop"],
        cwd=project,
        capture_output=True,
        env=child_env(),
        check=False,
        timeout=120,
    )


# --- the story -------------------------------------------------------------------------------


def model_fields(report: dict) -> dict:
    model = report.get("model") or {}
    return {key: model.get(key) for key in ("env", "name", "version", "digest", "storage_uri", "metrics")}


def predict(story: Story, endpoint: dict, env: str = "production") -> dict:
    """A real HTTP request to the endpoint (Open Inference Protocol v2) with the served model's
    own input example: after a rollback across a feature change it still matches."""
    python = str(story.project / ".venv" / "bin" / "python")
    body = json.loads(story.run("predict", [python, "-c", INPUT_EXAMPLE, env])[0])
    url = f"{endpoint['url']}/v2/models/{endpoint['model_name']}/infer"
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    return {
        "url": url,
        "rows": max((item.get("shape") or [0])[0] for item in body["inputs"]),
        "model_name": answer["model_name"],
        "model_version": answer.get("model_version"),
        "predictions": answer["outputs"][0]["data"],
        "served_digest": endpoint["digest"],
    }


def promote_to_production(story: Story, phase: str, pr_number: int) -> tuple[dict, list[dict], float, float]:
    """Merge a promotion PR and run production until it serves (retrain: merge the deployment PR).

    Returns the production outcome, the flow reports, and the seconds spent merging and in production.
    """
    _, merging = story.cli(phase, "merge", "--pr", str(pr_number))
    report, producing = story.cli(phase, "production")
    reports = [report]
    deployment = None
    proposed = report.get("pull_request")
    if story.pattern == "retrain" and proposed and proposed["branch"].startswith("deploy/"):
        # Production trained the model and proposed its deployment; auto_merge is off by
        # default, so a person merges it, and production converges again.
        deployment = proposed
        if deployment["state"] == "open":
            _, seconds = story.cli(phase, "merge", "--pr", str(deployment["number"]))
            merging += seconds
            report, seconds = story.cli(phase, "production")
            reports.append(report)
            producing += seconds
    return {"report": report, "deployment_pr": deployment}, reports, merging, producing


def run_story(story: Story, skip_check: bool = False) -> None:
    started = time.perf_counter()
    story.project = generate(story)
    story.record(
        "generate",
        f"cookiecutter --no-input . promotion={story.pattern}",
        time.perf_counter() - started,
        str(story.project),
    )
    story.record("bootstrap", "make bootstrap", story.make("bootstrap", "bootstrap"), ".venv with the pinned deps")
    if not skip_check:
        story.record("check", "make check", story.make("check", "check"), "lint, compile, render, validate: pass")

    sandbox, seconds = story.cli("sandbox", "sandbox")
    metrics = sandbox["model"]["metrics"]
    story.record(
        "sandbox",
        "make sandbox",
        seconds,
        f"sandbox v{sandbox['model']['version']}: accuracy {metrics['accuracy']:.3f}",
        sandbox,
    )

    staging, seconds = story.cli("staging", "staging")
    model = staging["model"]
    story.record(
        "staging",
        "make staging",
        seconds,
        f"staging v{model['version']} {model['digest'][:19]}, test endpoint smoke-tested, gates passed",
        staging,
    )

    prs, seconds = story.cli("promotion PR", "prs")
    promotion_pr = next(pr for pr in prs if pr["number"] == staging["pull_request"]["number"])
    story.record(
        "promotion PR",
        "make prs",
        seconds,
        f"#{promotion_pr['number']} {promotion_pr['branch']}: {', '.join(promotion_pr['files'])}",
    )

    production, reports, merging, producing = promote_to_production(story, "production", promotion_pr["number"])
    report = production["report"]
    deployment = production["deployment_pr"]
    merged = f"PR #{promotion_pr['number']}" + (f" and deployment PR #{deployment['number']}" if deployment else "")
    story.record("merge", f"make merge PR={promotion_pr['number']}", merging, f"{merged} merged, main fast-forwarded")
    story.record(
        "production",
        "make production",
        producing,
        f"serves v{report['endpoint']['version']} {report['endpoint']['digest'][:19]} at {report['endpoint']['url']}",
        *reports,
    )
    started = time.perf_counter()
    prediction = predict(story, report["endpoint"])
    story.record(
        "predict",
        "POST /v2/models/<name>/infer",
        time.perf_counter() - started,
        f"{prediction['model_name']} v{prediction['model_version']}: {prediction['predictions']}",
    )

    # a second candidate, promoted the same way; then roll back to the first model
    started = time.perf_counter()
    second_staging, _ = story.cli("second promotion", "staging", "--param", SECOND_CANDIDATE)
    second, second_reports, _, _ = promote_to_production(
        story, "second promotion", second_staging["pull_request"]["number"]
    )
    story.record(
        "second promotion",
        f'make staging PARAMS="{SECOND_CANDIDATE}"; merge; make production',
        time.perf_counter() - started,
        f"production serves {second['report']['endpoint']['digest'][:19]}",
        second_staging,
        *second_reports,
    )

    started = time.perf_counter()
    rollback, _ = story.cli("rollback", "rollback")
    story.cli("rollback", "merge", "--pr", str(rollback["pull_request"]["number"]))
    after, _ = story.cli("rollback", "production")
    rolled_back_prediction = predict(story, after["endpoint"])
    story.record(
        "rollback",
        "make rollback; merge; make production",
        time.perf_counter() - started,
        f"#{rollback['pull_request']['number']}: production serves {after['endpoint']['digest'][:19]} again",
        after,
    )

    status, _ = story.cli("status", "status")
    story.summary = {
        "project": str(story.project),
        "sandbox": model_fields(sandbox),
        "staging": {
            **model_fields(staging),
            "smoke": staging.get("smoke", {}).get("passed"),
            "gates": staging.get("gates"),
        },
        "promotion_pr": {key: promotion_pr[key] for key in ("number", "branch", "base", "title", "state", "files")},
        "deployment_pr": production["deployment_pr"]
        and {key: production["deployment_pr"][key] for key in ("number", "branch", "files")},
        "production": {
            **model_fields(report),
            "endpoint": report["endpoint"]["url"],
            "served_version": report["endpoint"]["version"],
            "served_digest": report["endpoint"]["digest"],
            "declared_digest": report["endpoint"]["digest"],
        },
        "prediction": prediction,
        "second_promotion": {
            "staging": model_fields(second_staging),
            "production_served_digest": second["report"]["endpoint"]["digest"],
        },
        "rollback": {
            "pull_request": {key: rollback["pull_request"][key] for key in ("number", "branch", "files")},
            "target_digest": rollback["target"]["modelDigest"],
            "production_served_digest": after["endpoint"]["digest"],
            "prediction": rolled_back_prediction,
        },
        "environments": [{k: v for k, v in row.items() if k != "registry"} for row in status["environments"]],
    }
    checks = verify(story)
    story.summary["checks"] = checks
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise DemoError(f"{story.pattern}: the story ended in a wrong state: {', '.join(failed)} (see summary.json)")


def run_guarded(story: Story, skip_check: bool) -> str | None:
    """One story in its thread: None when it ended well, else the one-line error (a bug's
    traceback goes to the story's log)."""
    try:
        run_story(story, skip_check=skip_check)
    except DemoError as exc:
        return str(exc)
    except Exception as exc:  # a wrong report shape or similar: name it, keep the traceback in the log
        import traceback

        with open(story.log, "a") as log:
            log.write(traceback.format_exc())
        return f"{story.pattern}: {type(exc).__name__}: {exc} (traceback in {story.log})"
    return None


def verify(story: Story) -> dict[str, bool]:
    """What the demo promises, checked on its own results."""
    s = story.summary
    production, rollback = s["production"], s["rollback"]
    promoted = s["staging"]["digest"] if story.pattern == "transit" else production["digest"]
    return {
        "production serves the promoted model": production["served_digest"] == promoted,
        "registry, release and endpoint digests match": production["digest"] == production["served_digest"],
        "prediction came from that model": s["prediction"]["served_digest"] == production["served_digest"],
        "second promotion switched serving": s["second_promotion"]["production_served_digest"]
        != production["served_digest"],
        "rollback serves the first model again": rollback["production_served_digest"]
        == production["served_digest"]
        == rollback["target_digest"],
    }


# --- output ----------------------------------------------------------------------------------


def overhead(story: Story) -> dict[str, float]:
    """Lifecycle wall time over the time inside training, registry calls and server start-up."""
    phases = [p for p in story.phases if p.name in LIFECYCLE_PHASES]
    wall = sum(p.seconds for p in phases)
    inner = {key: round(sum(p.inner.get(key, 0.0) for p in phases), 2) for key in ("training", "registry", "serving")}
    work = sum(inner.values())
    return {
        "lifecycle_seconds": round(wall, 2),
        **inner,
        "inner_seconds": round(work, 2),
        "ratio": round(wall / work, 3) if work else float("nan"),
    }


def phase_table(story: Story) -> str:
    lines = ["| phase | command | seconds | result |", "|---|---|---|---|"]
    lines += [f"| {p.name} | `{p.command}` | {p.seconds:.1f} | {p.result} |" for p in story.phases]
    lines.append(f"| **total** | | {sum(p.seconds for p in story.phases):.1f} | |")
    return "\n".join(lines)


def write_summary(out: Path, stories: list[Story], wall: float, error: str | None) -> Path:
    summary = {
        "ok": error is None,
        "error": error,
        "wall_seconds": round(wall, 2),
        "patterns": {
            story.pattern: {
                **story.summary,
                "timings": {p.name: p.seconds for p in story.phases},
                "total_seconds": round(sum(p.seconds for p in story.phases), 2),
                "overhead": overhead(story),
                "phases": [asdict(p) for p in story.phases],
                "log": str(story.log),
            }
            for story in stories
        },
    }
    path = out / "summary.json"
    partial = out / ".summary.json.partial"
    partial.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    partial.replace(path)
    return path


def _raise_interrupt(signum, frame):  # SIGTERM behaves like Ctrl-C: clean up, then stop
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build/demo", help="output folder (default: %(default)s)")
    parser.add_argument("--pattern", action="append", choices=PATTERNS, help="one pattern (default: both)")
    parser.add_argument("--skip-check", action="store_true", help="skip `make check` (the benchmark does)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    patterns = args.pattern or list(PATTERNS)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    stories: list[Story] = []
    started = time.perf_counter()
    error = None
    prepared = False
    try:
        prepare_out(out)
        prepared = True
        engine_wheels()
        for pattern in patterns:
            log = out / f"{pattern}.log"
            log.write_text("")
            stories.append(Story(pattern, out, log))
        print(f"running {', '.join(patterns)} side by side (logs: {out}/<pattern>.log)", flush=True)
        pool = ThreadPoolExecutor(max_workers=len(stories))
        try:
            futures = [pool.submit(run_guarded, story, args.skip_check) for story in stories]
            errors = [message for future in futures if (message := future.result())]
        finally:
            STOPPING.set()  # after an interrupt: the other story starts nothing more
            for process in list(_RUNNING):
                process.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
        error = "; ".join(errors) or None
    except DemoError as exc:
        error = str(exc)
    except KeyboardInterrupt:
        error = "interrupted"
    finally:
        for story in stories:  # every endpoint the demo started, whatever happened
            if story.project:
                stop_servers(story.project)
    wall = time.perf_counter() - started
    summary = write_summary(out, stories, wall, error) if prepared else None
    for story in stories:
        print(f"\n### {story.pattern}\n\n{phase_table(story)}")
        if story.summary.get("checks"):
            print("\n" + "\n".join(f"- [{'x' if ok else ' '}] {name}" for name, ok in story.summary["checks"].items()))
        ratio = overhead(story)
        print(
            f"\norchestration overhead: lifecycle {ratio['lifecycle_seconds']:.1f}s / (training "
            f"{ratio['training']:.1f}s + registry {ratio['registry']:.1f}s + server start-up "
            f"{ratio['serving']:.1f}s) = {ratio['ratio']:.2f}"
        )
    if error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 130 if error == "interrupted" else 1
    print(f"\ndemo done in {wall:.0f}s: every endpoint stopped. summary: {summary}")
    for story in stories:
        print(f"  {story.pattern}: project {story.project} (try `make -C {story.project} status`), log {story.log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
