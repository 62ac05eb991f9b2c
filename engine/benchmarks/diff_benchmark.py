"""Benchmark `diff` (overlays.py) on synthetic repositories; prints times and ratios in one run.

A repository of 3 environments x N applications (one overlay each, 3N overlays) where a pull
request touches one application's base, so 3 overlays are affected. Targets:

- diff / (the 3 affected overlays rendered at base and at head with kustomize directly) <= 1.5
- diff with 90 overlays / diff with 30 overlays ~ 1: the unaffected overlays cost (almost) nothing

Run: .venv/bin/python benchmarks/diff_benchmark.py [--apps 30] [--small 10] [--repeat 11]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlrail import kustomize, overlays

ENVS = ("production", "staging", "sandbox")
GIT = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com", "-c", "commit.gpgsign=false"]

# Block-style YAML only: the file is a cookiecutter template, where double braces are Jinja.
BASE_KUSTOMIZATION = """apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
labels:
  - pairs:
      app.kubernetes.io/name: {app}
resources:
  - deployment.yaml
  - service.yaml
configMapGenerator:
  - name: {app}-settings
    files:
      - settings.properties
"""
DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: {app}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: {app}
  template:
    metadata:
      labels:
        app: {app}
    spec:
      containers:
        - name: {app}
          image: registry.example.com/{app}:1.0.0
          resources:
            requests:
              cpu: 100m
              memory: 128Mi
            limits:
              cpu: 500m
              memory: {memory}
          volumeMounts:
            - name: settings
              mountPath: /etc/settings
      volumes:
        - name: settings
          configMap:
            name: {app}-settings
"""
SERVICE = """apiVersion: v1
kind: Service
metadata:
  name: {app}
spec:
  selector:
    app: {app}
  ports:
    - port: 80
      targetPort: 8080
"""
OVERLAY = """apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: {env}-{app}
resources:
  - ../../apps/{app}/base
images:
  - name: registry.example.com/{app}
    newTag: "{tag}"
patches:
  - target:
      kind: Deployment
      name: {app}
    patch: |-
      - op: replace
        path: /spec/replicas
        value: {replicas}
"""


def git(repo: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def make_repo(root: Path, apps: int) -> list[str]:
    """The synthetic repository at base, then a commit that changes one application's base."""
    root.mkdir(parents=True)
    names = [f"app{i:02d}" for i in range(apps)]
    for app in names:
        base = root / "deploy" / "apps" / app / "base"
        base.mkdir(parents=True)
        (base / "kustomization.yaml").write_text(BASE_KUSTOMIZATION.format(app=app))
        (base / "deployment.yaml").write_text(DEPLOYMENT.format(app=app, memory="256Mi"))
        (base / "service.yaml").write_text(SERVICE.format(app=app))
        (base / "settings.properties").write_text(f"app={app}\nlog.level=info\n")
        for replicas, env in enumerate(ENVS, start=1):
            overlay = root / "deploy" / "overlays" / f"{env}-{app}"
            overlay.mkdir(parents=True)
            (overlay / "kustomization.yaml").write_text(
                OVERLAY.format(env=env, app=app, tag="1.0.0", replicas=replicas)
            )
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "base")
    touched = names[len(names) // 2]
    base = root / "deploy" / "apps" / touched / "base"
    (base / "deployment.yaml").write_text(DEPLOYMENT.format(app=touched, memory="512Mi"))
    (base / "settings.properties").write_text(f"app={touched}\nlog.level=debug\n")
    git(root, "commit", "-qam", f"{touched}: more memory, debug logging")
    return [f"{env}-{touched}" for env in ENVS]


def extract(repo: Path, ref: str, into: Path) -> None:
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref, "deploy"], cwd=repo, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)


class Case:
    """One synthetic repository and the two ways of rendering what its pull request changes."""

    def __init__(self, workdir: Path, apps: int):
        self.apps, self.overlays = apps, apps * len(ENVS)
        self.repo = workdir / f"repo-{apps}"
        self.affected = make_repo(self.repo, apps)
        self.trees = [workdir / f"tree-{apps}-{side}" for side in ("base", "head")]
        for ref, folder in zip(("HEAD~1", "HEAD"), self.trees, strict=True):
            extract(self.repo, ref, folder)
        self.wall: dict[str, list[float]] = {"direct": [], "diff": [], "find": []}
        self.cpu: dict[str, list[float]] = {"direct": [], "diff": [], "find": []}

    def direct(self) -> None:
        """The floor: one kustomize per affected overlay and side, as a person would run them."""
        for name in self.affected:
            for folder in self.trees:
                target = str(folder / "deploy" / "overlays" / name)
                subprocess.run([*kustomize.command(), target], check=True, capture_output=True)

    def diff(self) -> None:
        report = overlays.diff_refs(self.repo, "HEAD~1", "HEAD")
        rendered = sorted(o.name for o in report.overlays)
        assert rendered == sorted(self.affected), rendered  # noqa: S101 - measure the right work
        assert all(o.status == "changed" for o in report.overlays)  # noqa: S101
        assert len(overlays.to_markdown(report)) < overlays.GITHUB_COMMENT_LIMIT  # noqa: S101

    def find(self) -> None:
        """Only the part that reads every overlay: git listing, kustomization parsing, the reference walk."""
        base, head = (
            subprocess.run(
                ["git", "rev-parse", ref], cwd=self.repo, capture_output=True, text=True, check=True
            ).stdout.strip()
            for ref in ("HEAD~1", "HEAD")
        )
        changes = overlays.changed_files(self.repo, base, head)
        with tempfile.TemporaryDirectory() as tmp:
            parsed: dict = {}
            trees = [overlays.Tree(self.repo, commit, "", Path(tmp) / commit, parsed) for commit in (base, head)]
            affected = overlays.affected_overlays(*trees, changes)
        assert sorted(affected.overlays) == sorted(self.affected)  # noqa: S101

    def timed(self, what: str) -> None:
        """Wall time, and CPU time of this process and every process it ran (kustomize, git)."""
        cpu, started = _cpu(), time.perf_counter()
        getattr(self, what)()
        self.wall[what].append(time.perf_counter() - started)
        self.cpu[what].append(_cpu() - cpu)


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def best(times: list[float]) -> float:
    """The fastest run: on a shared machine the slower ones measure the neighbours' load (as timeit does)."""
    return min(times)


def materialise_times(case: Case, workdir: Path, repeat: int = 3) -> tuple[float, float]:
    """Both commits as git worktrees versus `git archive` of deploy/ (created and removed)."""

    def worktrees() -> None:
        for ref in ("HEAD~1", "HEAD"):
            target = workdir / "worktree"
            git(case.repo, "worktree", "add", "-q", "--detach", str(target), ref)
            git(case.repo, "worktree", "remove", "--force", str(target))

    def archives() -> None:
        for ref in ("HEAD~1", "HEAD"):
            target = workdir / "archive"
            extract(case.repo, ref, target)
            shutil.rmtree(target)

    results = []
    for action in (worktrees, archives):
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            action()
            times.append(time.perf_counter() - started)
        results.append(min(times))
    return results[0], results[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=30, help="applications of the big repository (default: 30)")
    parser.add_argument("--small", type=int, default=10, help="applications of the small repository (default: 10)")
    parser.add_argument("--repeat", type=int, default=11, help="runs per measurement; the fastest is kept")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with tempfile.TemporaryDirectory(prefix="diff-bench-") as tmp:
        big, small = Case(Path(tmp), args.apps), Case(Path(tmp), args.small)
        for case in (big, small):
            case.diff()  # warm the page cache and kustomize's binary once
        for _ in range(args.repeat):  # interleaved, so drift on a busy machine hits both alike
            for case in (big, small):
                for what in ("direct", "diff", "find"):
                    case.timed(what)
        materialise = {case.overlays: materialise_times(case, Path(tmp)) for case in (big, small)}
    print(f"kustomize: {' '.join(kustomize.command())}; {os.cpu_count()} cores; best of {args.repeat} interleaved runs")
    print("CPU: seconds of every process involved (the cost); wall: elapsed, diff runs 2 kustomize at a time")
    print(
        "| overlays | direct wall | diff wall | wall ratio | direct CPU | diff CPU | CPU ratio | find affected |"
        " worktrees x2 | git archive x2 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for case in (big, small):
        worktree, archive = materialise[case.overlays]
        dw, fw, nw = (best(case.wall[what]) for what in ("direct", "diff", "find"))
        dc, fc = (best(case.cpu[what]) for what in ("direct", "diff"))
        print(
            f"| {case.overlays} | {dw:.3f}s | {fw:.3f}s | {fw / dw:.2f} | {dc:.3f}s | {fc:.3f}s | {fc / dc:.2f} |"
            f" {nw * 1000:.0f} ms | {worktree:.3f}s | {archive:.3f}s |"
        )

    def ratio(kind: str, a: Case, what_a: str, b: Case, what_b: str) -> float:
        return best(getattr(a, kind)[what_a]) / best(getattr(b, kind)[what_b])

    cpu_ratio, wall_ratio = ratio("cpu", big, "diff", big, "direct"), ratio("wall", big, "diff", big, "direct")
    cpu_scaling, wall_scaling = ratio("cpu", big, "diff", small, "diff"), ratio("wall", big, "diff", small, "diff")
    floor_cpu, floor_wall = ratio("cpu", big, "direct", small, "direct"), ratio("wall", big, "direct", small, "direct")
    print(
        f"diff / kustomize direct, {big.overlays} overlays: CPU {cpu_ratio:.2f}, wall {wall_ratio:.2f} (target <= 1.5)"
    )
    print(
        f"unaffected-overlay scaling, diff {big.overlays} / {small.overlays} overlays: CPU {cpu_scaling:.2f},"
        f" wall {wall_scaling:.2f} (target ~1.0; noise floor, the same direct work at both sizes:"
        f" CPU {floor_cpu:.2f}, wall {floor_wall:.2f})"
    )
    ok = max(cpu_ratio, wall_ratio) <= 1.5 and cpu_scaling <= 1.15
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
