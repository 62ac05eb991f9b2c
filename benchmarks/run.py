"""`make bench`: the template's targets as ratios measured in one run, printed as one table.

    generation / MLOps Stacks   our generation time over Databricks MLOps Stacks' cookiecutter
                                template at commit 69f7343 (target < 1)
    generation / hook-less      our generation time over the same template tree without hooks
                                (same file count, same rendering; target <= 1.3): the hooks' cost
    demo overhead               the demo's lifecycle wall time over the time inside training,
                                registry calls and server start-up (benchmarks/demo_overhead.py)
    demo wall / 120 s           `make demo`'s wall time over its 2-minute target
    generated lines / 1,500     Python lines (src + tests) of each option combination over the floor

Generation runs in this process through cookiecutter's API, the three templates interleaved per
round, after one warm-up round. MLOps Stacks is extracted from a local mirror of
github.com/databricks/mlops-stacks (`--mlops-stacks-git-dir`, default: the mirror this machine's
`fetch` tool keeps) into build/bench/; nothing of theirs is committed. Without the mirror that row
says so. The demo rows read build/demo/summary.json when a `make demo` left one, else run the
demo (without `make check`) into build/bench/demo.

    .venv/bin/python benchmarks/run.py [--rounds 7] [--demo-summary PATH] [--skip-demo]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "bench"
STACKS_COMMIT = "69f7343"
STACKS_MIRROR = Path("/work/.mirror/databricks+mlops-stacks/repo")
LINE_FLOOR = 1500
DEMO_TARGET_SECONDS = 120.0
COMBINATIONS = [{"promotion": p, "argocd": a} for p in ("transit", "retrain") for a in ("yes", "no")]

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_overhead  # noqa: E402  (the demo's overhead figures, one definition)


def extract_stacks(git_dir: Path) -> Path | None:
    """MLOps Stacks at the pinned commit, extracted from the mirror (git archive) into build/bench/."""
    target = BUILD / f"mlops-stacks-{STACKS_COMMIT}"
    if (target / "cookiecutter.json").is_file():
        return target
    if not (git_dir / "HEAD").exists():
        return None
    archive = subprocess.run(
        ["git", "--git-dir", str(git_dir), "archive", "--format=tar", STACKS_COMMIT],
        capture_output=True,
        timeout=120,
        check=False,
    )
    if archive.returncode != 0:
        return None
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(partial, filter="data")
    partial.replace(target)
    return target


def hookless_copy() -> Path:
    """This template's tree and inputs without hooks/: the same files, rendered the same way."""
    target = BUILD / "hookless"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copy2(ROOT / "cookiecutter.json", target / "cookiecutter.json")
    shutil.copytree(
        ROOT / "{{cookiecutter.project}}",
        target / "{{cookiecutter.project}}",
        ignore=shutil.ignore_patterns("__pycache__", ".venv", ".mlops", "build"),
    )
    return target


def count_files(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.is_file() and ".git" not in path.relative_to(folder).parts)


def generate_once(template: Path, out: Path, config: Path, extra: dict[str, str] | None = None) -> tuple[float, Path]:
    """Seconds to generate one project with --no-input, hooks (if any) included."""
    from cookiecutter.main import cookiecutter

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.perf_counter()
    with quiet():
        project = cookiecutter(
            str(template), no_input=True, output_dir=str(out), config_file=str(config), extra_context=extra or {}
        )
    return time.perf_counter() - started, Path(project)


@contextmanager
def quiet():
    """Hooks run as subprocesses and print to the inherited descriptors: silence those too."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(os.devnull, "w") as null, redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def generation_ratios(rounds: int, stacks: Path | None) -> tuple[dict[str, list[float]], dict[str, int]]:
    hookless = hookless_copy()
    templates = {"ours": ROOT, "hookless": hookless, **({"stacks": stacks} if stacks else {})}
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        work = Path(scratch)
        config = work / "cookiecutter.yaml"
        config.write_text(f"cookiecutters_dir: {work / 'cc'}\nreplay_dir: {work / 'replay'}\n")
        env = {"GIT_CONFIG_GLOBAL": str(work / "gitconfig"), "GIT_CONFIG_NOSYSTEM": "1"}
        (work / "gitconfig").write_text("")
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            files = {}
            for name, template in templates.items():  # warm-up: imports, file caches
                _, project = generate_once(template, work / name, config)
                files[name] = count_files(project)
            seconds: dict[str, list[float]] = {name: [] for name in templates}
            for _ in range(rounds):
                for name, template in templates.items():
                    seconds[name].append(generate_once(template, work / name, config)[0])
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    ratios = {"generation / hook-less": [o / h for o, h in zip(seconds["ours"], seconds["hookless"], strict=True)]}
    if stacks:
        ratios["generation / MLOps Stacks"] = [o / s for o, s in zip(seconds["ours"], seconds["stacks"], strict=True)]
    ratios["_seconds"] = {name: statistics.median(values) for name, values in seconds.items()}  # type: ignore[assignment]
    return ratios, files


def python_lines(project: Path) -> int:
    total = 0
    for folder in ("src", "tests"):
        for path in (project / folder).rglob("*.py"):
            total += len(path.read_text().splitlines())
    return total


def line_ratios() -> tuple[list[float], list[int]]:
    with tempfile.TemporaryDirectory(prefix="bench-lines-") as scratch:
        work = Path(scratch)
        config = work / "cookiecutter.yaml"
        config.write_text(f"cookiecutters_dir: {work / 'cc'}\nreplay_dir: {work / 'replay'}\n")
        projects = [generate_once(ROOT, work / str(i), config, extra)[1] for i, extra in enumerate(COMBINATIONS)]
        lines = [python_lines(project) for project in projects]
    return [n / LINE_FLOOR for n in lines], lines


def demo_summary(path: Path | None, skip: bool) -> dict | None:
    if skip:
        return None
    candidates = [path] if path else [ROOT / "build" / "demo" / "summary.json"]
    for candidate in candidates:
        if candidate and candidate.is_file():
            summary = json.loads(candidate.read_text())
            if summary.get("ok"):
                return summary
    if path:
        raise SystemExit(f"error: --demo-summary {path} is missing or records a failed demo")
    return json.loads(demo_overhead.run_demo(BUILD / "demo").read_text())


def row(name: str, values: list[float], target: str, note: str = "") -> str:
    if not values:
        return f"| {name} | n/a | n/a | n/a | {target} | {note} |"
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"| {name} | {low:.2f} | {mid:.2f} | {high:.2f} | {target} | {note} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="generation rounds per template (default: %(default)s)")
    parser.add_argument("--mlops-stacks-git-dir", type=Path, default=STACKS_MIRROR, help="a mlops-stacks mirror")
    parser.add_argument("--demo-summary", type=Path, help="a demo's summary.json (default: build/demo's, else run it)")
    parser.add_argument("--skip-demo", action="store_true", help="leave out the demo rows")
    args = parser.parse_args(argv)
    BUILD.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    stacks = extract_stacks(args.mlops_stacks_git_dir)
    generation, files = generation_ratios(args.rounds, stacks)
    medians = generation.pop("_seconds")
    lines_ratio, lines = line_ratios()
    summary = demo_summary(args.demo_summary, args.skip_demo)

    print("| ratio | min | median | max | target | measured |")
    print("|---|---|---|---|---|---|")
    ms = {name: f"{seconds * 1000:.0f} ms" for name, seconds in medians.items()}
    print(
        row(
            "generation / MLOps Stacks 69f7343",
            generation.get("generation / MLOps Stacks", []),
            "< 1",
            f"median ours {ms['ours']}, theirs {ms['stacks']} ({files['stacks']} files)"
            if stacks
            else f"no mirror at {args.mlops_stacks_git_dir}",
        )
    )
    print(
        row(
            "generation / hook-less, same files",
            generation["generation / hook-less"],
            "<= 1.3",
            f"median ours {ms['ours']} ({files['ours']} files), hook-less {ms['hookless']} ({files['hookless']} files)",
        )
    )
    if summary:
        overheads = [story["overhead"]["ratio"] for story in summary["patterns"].values()]
        print(row("demo overhead (lifecycle / inner work)", overheads, "<= 1.5", "per pattern"))
        wall = summary["wall_seconds"]
        print(row("demo wall / 120 s", [wall / DEMO_TARGET_SECONDS], "<= 1", f"{wall:.0f} s, both patterns"))
    else:
        print(row("demo overhead (lifecycle / inner work)", [], "<= 1.5", "skipped"))
    print(
        row(
            "generated Python lines / 1,500",
            lines_ratio,
            "<= 1",
            f"src + tests of the 4 option combinations: {min(lines)}-{max(lines)} lines",
        )
    )
    print(f"\n{args.rounds} generation rounds per template after one warm-up; ratios per round.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
