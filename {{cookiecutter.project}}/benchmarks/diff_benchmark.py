"""Benchmark `diff` (overlays.py) on synthetic repositories; prints times and ratios in one run.

A repository of 3 environments x N applications (one overlay each, 3N overlays) where a pull
request touches one application's base, so 3 overlays are affected. Targets:

- diff / (the 3 affected overlays rendered at base and at head with kustomize directly) <= 1.5
- diff with 90 overlays / diff with 30 overlays ~ 1: the unaffected overlays cost (almost) nothing

Run: .venv/bin/python benchmarks/diff_benchmark.py [--apps 30] [--small 10] [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from {{ cookiecutter.package }} import kustomize, overlays

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
        self.times: dict[str, list[float]] = {"direct": [], "diff": []}

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

    def timed(self, what: str) -> None:
        started = time.perf_counter()
        getattr(self, what)()
        self.times[what].append(time.perf_counter() - started)

    def median(self, what: str) -> float:
        return statistics.median(self.times[what])


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
        results.append(statistics.median(times))
    return results[0], results[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=30, help="applications of the big repository (default: 30)")
    parser.add_argument("--small", type=int, default=10, help="applications of the small repository (default: 10)")
    parser.add_argument("--repeat", type=int, default=7, help="runs per measurement; the median is kept")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with tempfile.TemporaryDirectory(prefix="diff-bench-") as tmp:
        big, small = Case(Path(tmp), args.apps), Case(Path(tmp), args.small)
        for case in (big, small):
            case.diff()  # warm the page cache and kustomize's binary once
        for _ in range(args.repeat):  # interleaved, so drift on a busy machine hits both alike
            for case in (big, small):
                case.timed("direct")
                case.timed("diff")
        materialise = {case.overlays: materialise_times(case, Path(tmp)) for case in (big, small)}
    ratio = big.median("diff") / big.median("direct")
    scaling = big.median("diff") / small.median("diff")
    print(f"kustomize: {' '.join(kustomize.command())}; {os.cpu_count()} cores; median of {args.repeat} runs")
    print(
        "| overlays | kustomize direct (3 affected x 2 sides) | diff | diff / direct |"
        " worktree add+remove x2 | git archive deploy/ x2 |"
    )
    print("|---|---|---|---|---|---|")
    for case in (big, small):
        worktree, archive = materialise[case.overlays]
        print(
            f"| {case.overlays} | {case.median('direct'):.3f}s | {case.median('diff'):.3f}s |"
            f" {case.median('diff') / case.median('direct'):.2f} | {worktree:.3f}s | {archive:.3f}s |"
        )
    print(f"diff / direct at {big.overlays} overlays: {ratio:.2f} (target <= 1.5)")
    print(
        f"unaffected-overlay scaling, diff at {big.overlays} / {small.overlays} overlays: {scaling:.2f}"
        f" (direct: {big.median('direct') / small.median('direct'):.2f}; target ~1.0)"
    )
    ok = ratio <= 1.5 and scaling <= 1.15
    print("targets met" if ok else "TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
