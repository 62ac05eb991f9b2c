"""The reviewable diff of a pull request: which overlays it affects, what changes in their
rendered resources, and what changes in the compiled pipelines, as GitHub markdown that fits
one comment.

- Affected overlays come from walking every kustomization's file references at base and at
  head; a changed path (either side of a rename) that an overlay uses makes it affected. When
  the walk cannot be trusted (a kustomization that does not parse, an unreferenced file under
  deploy/, a non-builtin plugin) every overlay is rendered.
- Each commit is read straight from git (`ls-tree`, `cat-file --batch`), and only the files the
  affected overlays read are written, with `git archive`, into a temporary folder that is always
  removed: the user's working tree, index and worktree list are never touched, and the cost
  follows the affected overlays, not the size of deploy/. src/ and pyproject.toml are extracted
  and compiled (in a subprocess per commit, alongside the renders) only when they or the Dockerfile
  changed, each commit against its own project image `<image>@<source digest>` (mlrail.source): a
  change to any file the image holds (features.py, say) changes every component's image, so the
  diff shows that the code released with the pipelines changed.
- Resources are compared by kind/namespace/name after normalising (sorted keys, one YAML style).
"""

from __future__ import annotations

import concurrent.futures
import difflib
import functools
import hashlib
import json
import os
import posixpath
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import git as gitcmd
from . import kustomize
from .console import table
from .errors import MlopsError

GITHUB_COMMENT_LIMIT = 65_536
# The pull-request workflow adds a marker and a title around the markdown: keep room for them.
DEFAULT_MAX_CHARS = 65_000
ENV_ORDER = ("production", "staging", "sandbox")
# A change under these changes a compiled pipeline (the code, or the image it runs in).
PIPELINE_INPUTS = ("src/", "pyproject.toml", "Dockerfile")
PIPELINE_FILES = ("src", "pyproject.toml")
SIDES = ("base", "head")
DEFAULT_IMAGE = "project-image"  # the image name when config names none
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Kustomizations are only read for their references: every scalar as a string is enough, and faster.
_RefLoader = getattr(yaml, "CBaseLoader", yaml.BaseLoader)
_DOC_NAMES = re.compile(r"(^|/)(README|LICENSE|OWNERS|CODEOWNERS)[^/]*$|\.(md|txt|rst)$|(^|/)\.gitkeep$", re.I)
_REMOTE = re.compile(r"://|^git@|^git::|^(github|gitlab|bitbucket)\.(com|org)/|\?ref=|\?version=")
_GENERATED_SUFFIX = re.compile(r"^(?P<stem>.+)-[a-z0-9]{10}$")  # configMapGenerator/secretGenerator hash
_DIGEST = re.compile(r"(sha256[:-])([0-9a-f]{12})[0-9a-f]{52}")


class DiffError(MlopsError):
    """A git ref or repository the diff cannot use; the message names it."""


# --- git ------------------------------------------------------------------------------------


def _git(repo: Path, *args: str) -> str:
    return gitcmd.run(repo, *args, error=DiffError, strip=False)


def resolve(repo: Path, ref: str, option: str = "ref") -> str:
    """The commit a ref names, or one clear error naming the option."""
    if not ref or ref.startswith("-") or any(ch.isspace() for ch in ref):
        raise DiffError(f"{option} {ref!r} is not a git ref: pass a branch, tag or commit, e.g. origin/main")
    commit = gitcmd.rev(repo, ref + "^{commit}")
    if commit is None:
        raise DiffError(f"{option} {ref!r} is not a commit in {repo}: fetch it (git fetch origin) or fix the name")
    return commit


@dataclass(frozen=True)
class Change:
    """One line of `git diff --name-status -M`: a rename keeps both paths."""

    status: str  # A, M, D, R, C or T
    path: str
    old_path: str | None = None

    @property
    def paths(self) -> tuple[str, ...]:
        return (self.old_path, self.path) if self.old_path else (self.path,)


def changed_files(repo: Path, base: str, head: str) -> list[Change]:
    """The files that differ between two commits, relative to the project root."""
    out = _git(repo, "diff", "--name-status", "-M", "-z", "--no-ext-diff", "--relative", base, head, "--")
    tokens = out.split("\0")
    changes, i = [], 0
    while i < len(tokens) and tokens[i]:
        status = tokens[i][0]
        if status in "RC":
            changes.append(Change(status, tokens[i + 2], tokens[i + 1]))
            i += 3
        else:
            changes.append(Change(status, tokens[i + 1]))
            i += 2
    return changes


class Tree:
    """One commit's files, read straight from git: an index of the listed folders (`git ls-tree`),
    blobs on demand (`git cat-file --batch`), and `git archive` of just the files a render needs
    into a temporary folder. Nothing of the user's working tree, index or worktrees is touched,
    and the work grows with what is rendered, not with the size of deploy/."""

    def __init__(self, repo: Path, commit: str, prefix: str, root: Path, parsed: dict | None = None):
        self.repo, self.commit, self.root = repo, commit, root
        self.treeish = f"{commit}:{prefix}" if prefix else commit
        self.files: dict[str, str] = {}  # path -> blob id, for the listed folders
        self.dirs: set[str] = set()
        self.listed: set[str] = set()
        self._text: dict[str, str | None] = {}
        self.parsed = {} if parsed is None else parsed  # blob id -> YAML documents; shared by base and head

    def parse(self, path: str) -> list | None:
        """The YAML documents of a file (None when absent); a file unchanged since base is parsed once."""
        blob = self.files.get(path)
        if blob is None:
            return None
        if blob not in self.parsed:
            text = self.read(path)
            self.parsed[blob] = None if text is None else list(yaml.load_all(text, Loader=_RefLoader))  # noqa: S506
        return self.parsed[blob]

    def list(self, paths: Iterable[str]) -> None:
        """Index every file under these paths (missing ones are simply absent)."""
        wanted = sorted(p for p in set(paths) if not self.covers(p))
        if not wanted:
            return
        self.listed.update(wanted)
        for entry in _git(self.repo, "ls-tree", "-r", "-z", self.treeish, "--", *wanted).split("\0"):
            meta, _, path = entry.partition("\t")
            if path and meta.split(" ")[1] == "blob":
                self.files[path] = meta.split(" ")[2]
                parent = posixpath.dirname(path)
                while parent and parent not in self.dirs:
                    self.dirs.add(parent)
                    parent = posixpath.dirname(parent)

    def covers(self, path: str) -> bool:
        return any(path == p or path.startswith(p + "/") for p in self.listed)

    def is_dir(self, path: str) -> bool:
        return path in self.dirs

    def read(self, path: str) -> str | None:
        if path not in self._text:
            self.prefetch([path])
        return self._text[path]

    def prefetch(self, paths: Iterable[str]) -> None:
        """Read many blobs with one git process."""
        paths = [p for p in paths if p not in self._text]
        for path in paths:
            self._text[path] = None
        ids: dict[str, list[str]] = {}  # identical files share one blob
        for path in paths:
            if path in self.files:
                ids.setdefault(self.files[path], []).append(path)
        if not ids:
            return
        proc = subprocess.run(
            ["git", "cat-file", "--batch"],
            cwd=self.repo,
            input="\n".join(ids).encode() + b"\n",
            capture_output=True,
            check=True,
        )
        out, pos = proc.stdout, 0
        while pos < len(out):
            end = out.index(b"\n", pos)
            header = out[pos:end].decode().split(" ")
            if len(header) != 3:  # "<id> missing": cannot happen for ids ls-tree listed
                raise DiffError(f"git cat-file cannot read {header[0]} at {self.treeish}")
            blob, size = header[0], int(header[2])
            data, pos = out[end + 1 : end + 1 + size], end + 2 + size
            try:
                text: str | None = data.decode()
            except UnicodeDecodeError:
                text = None
            for path in ids[blob]:
                self._text[path] = text

    def extract(self, paths: Iterable[str]) -> None:
        """Write these files and folders (those that exist at this commit) under `root`."""
        present = sorted(p for p in set(paths) if p in self.files or p in self.dirs)
        self.root.mkdir(parents=True, exist_ok=True)
        if not present:
            return
        cmd = ["git", "archive", "--format=tar", self.treeish, "--", *present]
        proc = subprocess.Popen(cmd, cwd=self.repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
                archive.extractall(self.root, filter="data")  # no links or paths out of the folder
        finally:
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            proc.wait()
        if proc.returncode:
            raise DiffError(f"git archive {self.treeish} failed: {stderr.strip()}")


# --- which overlays a change affects --------------------------------------------------------


@dataclass
class Deps:
    """The files (and whole folders, e.g. a helm chart) one kustomization reads."""

    files: set[str] = field(default_factory=set)
    dirs: set[str] = field(default_factory=set)
    kustomizations: set[str] = field(default_factory=set)  # the folders walked
    uncertain: list[str] = field(default_factory=list)  # why this walk may miss a file

    def update(self, other: Deps) -> None:
        self.files |= other.files
        self.dirs |= other.dirs
        self.kustomizations |= other.kustomizations
        self.uncertain += [u for u in other.uncertain if u not in self.uncertain]

    def touches(self, path: str) -> bool:
        return path in self.files or any(path == d or path.startswith(d + "/") for d in self.dirs)

    def outside(self, folder: str) -> set[str]:
        return {p for p in self.files | self.dirs if not (p == folder or p.startswith(folder + "/"))}


class ParseFailure(Exception):
    pass


def _join(directory: str, ref: str) -> str | None:
    """A reference resolved against its kustomization folder; None when it leaves the repository."""
    if not isinstance(ref, str) or not ref or ref.startswith("/"):
        return None
    path = posixpath.normpath(posixpath.join(directory, ref))
    return None if path == ".." or path.startswith("../") else path


class Walker:
    """Follows kustomization references inside one commit; each folder is read once."""

    def __init__(self, tree: Tree):
        self.tree = tree
        self.cache: dict[str, Deps] = {}
        self.failures: list[str] = []
        self._active: set[str] = set()

    def kustomization(self, directory: str) -> Deps:
        if directory in self.cache:
            return self.cache[directory]
        deps = Deps({posixpath.join(directory, name) for name in kustomize.KUSTOMIZATION_FILES}, set(), {directory})
        if directory in self._active:  # a cycle: kustomize reports it when rendering
            return deps
        self._active.add(directory)
        try:
            spec = self._load(directory)
            if spec is not None:
                self._references(directory, spec, deps)
        except ParseFailure as exc:
            self.failures.append(str(exc))
        finally:
            self._active.discard(directory)
        self.cache[directory] = deps
        return deps

    def _load(self, directory: str) -> dict | None:
        for name in kustomize.KUSTOMIZATION_FILES:
            path = posixpath.join(directory, name)
            try:
                docs = self.tree.parse(path)
            except yaml.YAMLError as exc:
                raise ParseFailure(f"`{path}` does not parse ({str(exc).splitlines()[0]})") from None
            if docs is not None:
                if len(docs) != 1 or not isinstance(docs[0], dict):
                    raise ParseFailure(f"`{path}` is not one YAML mapping")
                return docs[0]
        return None

    def _path(self, directory: str, ref: Any, deps: Deps, kustomizations: bool = False) -> None:
        if not isinstance(ref, str) or _REMOTE.search(ref):
            return  # remote bases are fetched by kustomize; no file of this repository
        path = _join(directory, ref)
        if path is None:
            return
        if kustomizations and self.tree.is_dir(path):
            deps.update(self.kustomization(path))
        else:
            deps.files.add(path)

    def _references(self, directory: str, spec: dict, deps: Deps) -> None:
        def items(key: str) -> list:
            value = spec.get(key)
            return value if isinstance(value, list) else []

        for key in ("resources", "bases", "components"):
            for ref in items(key):
                self._path(directory, ref, deps, kustomizations=True)
        for key in ("patches", "patchesJson6902", "replacements"):
            for entry in items(key):
                if isinstance(entry, dict):
                    self._path(directory, entry.get("path"), deps)
        for entry in items("patchesStrategicMerge"):
            if isinstance(entry, str) and "\n" not in entry:  # otherwise an inline patch
                self._path(directory, entry, deps)
        for key in ("configMapGenerator", "secretGenerator"):
            for entry in items(key):
                self._generator_files(directory, entry, deps)
        for key in ("crds", "configurations"):
            for ref in items(key):
                self._path(directory, ref, deps)
        if isinstance(spec.get("openapi"), dict):
            self._path(directory, spec["openapi"].get("path"), deps)
        globals_ = spec.get("helmGlobals") if isinstance(spec.get("helmGlobals"), dict) else {}
        chart_home = globals_.get("chartHome", "charts")
        for chart in items("helmCharts"):
            if isinstance(chart, dict):
                self._path(directory, chart.get("valuesFile"), deps)
                for ref in chart.get("additionalValuesFiles") or []:
                    self._path(directory, ref, deps)
                home = _join(directory, posixpath.join(chart_home, str(chart.get("name", ""))))
                if home:
                    deps.dirs.add(home)  # every file of a local chart is read
        for key in ("generators", "transformers", "validators"):
            for ref in items(key):
                self._plugin(directory, ref, deps)

    def _generator_files(self, directory: str, entry: Any, deps: Deps) -> None:
        if not isinstance(entry, dict):
            return
        for ref in entry.get("files") or []:
            if isinstance(ref, str):
                self._path(directory, ref.split("=", 1)[-1], deps)  # "key=path" or "path"
        for ref in [*(entry.get("envs") or []), entry.get("env")]:
            self._path(directory, ref, deps)

    def _plugin(self, directory: str, ref: Any, deps: Deps) -> None:
        """A generator/transformer: a kustomization folder, or a plugin config file or inline config."""
        if not isinstance(ref, str):
            return
        if "\n" in ref:
            configs = list(yaml.load_all(ref, Loader=_RefLoader))  # noqa: S506 - a safe loader
        else:
            path = _join(directory, ref)
            if path is None:
                return
            if self.tree.is_dir(path):
                deps.update(self.kustomization(path))
                return
            deps.files.add(path)
            try:
                configs = self.tree.parse(path) or []
            except yaml.YAMLError:
                return  # kustomize reports a broken config when rendering
        for config in configs:
            if not isinstance(config, dict):
                continue
            if config.get("apiVersion") != "builtin":
                deps.uncertain.append(f"{directory} uses the plugin {config.get('kind')!r}, which may read any file")
                continue
            self._generator_files(directory, config, deps)
            for key in ("path", "valuesFile"):
                self._path(directory, config.get(key), deps)


@dataclass
class Affected:
    overlays: dict[str, list[str]]  # overlay -> the changed paths that affect it
    unaffected: list[str]
    everything: str | None = None  # why every overlay is rendered, when the walk cannot be trusted
    walkers: tuple[Walker, ...] = ()  # base, head


def overlay_order(name: str) -> tuple[int, str]:
    """production first, then staging, sandbox, then the others by name."""
    for rank, env in enumerate(ENV_ORDER):
        if name == env or name.startswith((f"{env}-", f"{env}_", f"{env}.")):
            return rank, name
    return len(ENV_ORDER), name


def _kustomization_dirs(tree: Tree, under: str) -> list[str]:
    """Every kustomization folder under a path, e.g. deploy/argocd or shared components."""
    found = {posixpath.dirname(p) for p in tree.files if posixpath.basename(p) in kustomize.KUSTOMIZATION_FILES}
    return sorted(d for d in found if d.startswith(under + "/"))


def _overlay_names(tree: Tree) -> list[str]:
    return [d.split("/")[2] for d in _kustomization_dirs(tree, "deploy/overlays") if d.count("/") == 2]


def _walk(tree: Tree, max_rounds: int = 4) -> tuple[Walker, dict[str, Deps]]:
    """Walk every overlay; references outside deploy/ are listed too and the walk repeated."""
    tree.list(["deploy"])
    for _ in range(max_rounds):
        kustomizations = [p for p in tree.files if posixpath.basename(p) in kustomize.KUSTOMIZATION_FILES]
        tree.prefetch(p for p in kustomizations if tree.files[p] not in tree.parsed)
        walker = Walker(tree)
        graphs = {name: walker.kustomization(f"deploy/overlays/{name}") for name in _overlay_names(tree)}
        outside = {p for deps in walker.cache.values() for p in deps.outside("deploy") if not tree.covers(p)}
        if not outside:
            break
        tree.list(outside)
    return walker, graphs


def needed_files(walker: Walker, overlays: Iterable[str]) -> set[str]:
    """What rendering these overlays reads: every walked kustomization folder and each referenced path."""
    needed: set[str] = set()
    for name in overlays:
        deps = walker.cache.get(f"deploy/overlays/{name}")
        if deps:
            needed |= deps.files | deps.dirs | deps.kustomizations
    return needed


def affected_overlays(base: Tree, head: Tree, changes: list[Change]) -> Affected:
    """The overlays whose kustomization graph, at base or at head, reads a changed path."""
    walked = [_walk(base), _walk(head)]
    names = sorted({name for _, graphs in walked for name in graphs}, key=overlay_order)
    paths = sorted({p for change in changes for p in change.paths})

    walkers = tuple(walker for walker, _ in walked)

    def render_all(reason: str) -> Affected:
        return Affected({name: [] for name in names}, [], reason, walkers)

    failures = [failure for walker, _ in walked for failure in walker.failures]
    if failures:
        return render_all(f"{failures[0]}, so the references cannot be followed")
    in_deploy = [p for p in paths if p.startswith("deploy/")]
    affected: dict[str, list[str]] = {}
    for name in names:
        graphs = [graphs[name] for _, graphs in walked if name in graphs]
        hits = [p for p in paths if any(deps.touches(p) for deps in graphs)]
        if not hits and in_deploy and any(deps.uncertain for deps in graphs):
            hits = in_deploy  # a plugin may read any of them
        if hits:
            affected[name] = hits
    # A deploy/ file that no kustomization references cannot be attributed: render everything.
    attributed = [deps for _, graphs in walked for deps in graphs.values()]
    loose = [p for p in in_deploy if not _DOC_NAMES.search(p) and not any(d.touches(p) for d in attributed)]
    if loose:
        for (walker, _), tree in zip(walked, (base, head), strict=True):
            for folder in _kustomization_dirs(tree, "deploy"):
                attributed.append(walker.kustomization(folder))
        loose = [p for p in loose if not any(d.touches(p) for d in attributed)]
        if loose:
            return render_all(f"`{loose[0]}` is not referenced by any kustomization")
    return Affected(affected, [name for name in names if name not in affected], None, walkers)


# --- rendering and comparing ----------------------------------------------------------------


@dataclass
class Rendered:
    docs: list[dict] | None = None  # None: the overlay does not exist or failed
    error: str | None = None


def render_overlay(tree: Tree, name: str) -> Rendered:
    directory = tree.root / "deploy" / "overlays" / name
    if not kustomize.has_kustomization(directory):
        return Rendered()
    try:
        text = kustomize.render(directory)
    except kustomize.KustomizeError as exc:
        # Paths relative to the repository, never the temporary folder: the output is deterministic.
        return Rendered(error=str(exc).replace(f"{tree.root}{os.sep}", "").replace(str(tree.root), "."))
    return Rendered(docs=[doc for doc in yaml.load_all(text, Loader=_Loader) if isinstance(doc, dict)])  # noqa: S506


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # libyaml when present: 20x faster
    pass


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None  # multi-line values (scripts, files) diff line by line
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)
_TOP_KEYS = ("apiVersion", "kind", "metadata", "spec", "data", "stringData")


def _sorted(value: Any, top: bool = False) -> Any:
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (_TOP_KEYS.index(k) if top and k in _TOP_KEYS else 99, str(k)))
        return {k: _sorted(value[k]) for k in keys}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def normalised_yaml(doc: dict) -> str:
    """One canonical YAML text per resource: key order and formatting never show as changes."""
    return yaml.dump(_sorted(doc, top=True), Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True)


def resource_key(doc: dict) -> tuple[str, str, str]:
    meta = doc.get("metadata") or {}
    return str(doc.get("kind", "?")), str(meta.get("namespace") or ""), str(meta.get("name", "?"))


def resource_label(key: tuple[str, str, str]) -> str:
    kind, namespace, name = key
    return f"{kind} {namespace}/{name}" if namespace else f"{kind} {name}"


@dataclass
class ResourceDiff:
    key: tuple[str, str, str]
    status: str  # added, removed, changed
    diff: list[str]  # unified diff lines (no file header)
    renamed_from: str | None = None  # a generated ConfigMap/Secret whose hash suffix changed


def _index(docs: list[dict]) -> dict[tuple[str, str, str], dict]:
    index: dict[tuple[str, str, str], dict] = {}
    for doc in docs:
        key = resource_key(doc)
        while key in index:  # the same kind/name in two API groups
            key = (f"{key[0]} ({doc.get('apiVersion')})", key[1], key[2])
        index[key] = doc
    return index


def compare_resources(base_docs: list[dict], head_docs: list[dict]) -> list[ResourceDiff]:
    """Per resource: added, removed, changed (with a unified diff of the normalised YAML)."""
    base, head = _index(base_docs), _index(head_docs)
    pairs: list[tuple[tuple, tuple | None, tuple | None]] = []
    removed = [k for k in base if k not in head]
    added = [k for k in head if k not in base]
    # A generated ConfigMap/Secret gets a new hash suffix when its content changes: pair them.
    for key in list(added):
        match = _GENERATED_SUFFIX.match(key[2])
        if key[0] not in ("ConfigMap", "Secret") or not match:
            continue
        twins = [k for k in removed if k[:2] == key[:2] and _GENERATED_SUFFIX.match(k[2])]
        twins = [k for k in twins if _GENERATED_SUFFIX.match(k[2])["stem"] == match["stem"]]
        if len(twins) == 1:
            pairs.append((key, twins[0], key))
            removed.remove(twins[0])
            added.remove(key)
    pairs += [(k, k, k) for k in head if k in base]
    pairs += [(k, None, k) for k in added] + [(k, k, None) for k in removed]
    results = []
    for key, old, new in pairs:
        if old and new and base[old] == head[new]:  # dict equality ignores key order
            continue
        old_text = normalised_yaml(base[old]).splitlines() if old else []
        new_text = normalised_yaml(head[new]).splitlines() if new else []
        if old_text == new_text:
            continue
        if old and new:
            lines = list(difflib.unified_diff(old_text, new_text, lineterm="", n=3))[2:]
            renamed = old[2] if old != new else None
            results.append(ResourceDiff(key, "changed", lines, renamed_from=renamed))
        elif new:
            results.append(ResourceDiff(key, "added", [f"+{line}" for line in new_text]))
        else:
            results.append(ResourceDiff(key, "removed", [f"-{line}" for line in old_text]))
    order = {"changed": 0, "added": 1, "removed": 2}
    return sorted(results, key=lambda r: (order[r.status], r.key))


# --- headline: what a reviewer looks for first ----------------------------------------------

_WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod", "Rollout"}
_ISVC_PARTS = ("predictor", "transformer", "explainer")


def _pod_spec(doc: dict) -> dict:
    spec = doc.get("spec") or {}
    if doc.get("kind") == "Pod":
        return spec
    if doc.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return ((spec.get("template") or {}).get("spec")) or {}


# Headline ranks: the order a reviewer reads them in.
_VERSION, _DIGEST_RANK, _NAME, _STORAGE, _IMAGE, _REPLICAS, _RESOURCES = range(7)


def _container_facts(facts: dict, where: str, container: dict, name: str) -> None:
    if container.get("image"):
        facts[(_IMAGE, f"{where} {name} image")] = str(container["image"])
    for bound in ("requests", "limits"):
        for resource, value in sorted(((container.get("resources") or {}).get(bound) or {}).items()):
            facts[(_RESOURCES, f"{where} {name} {bound}.{resource}")] = str(value)


def headline_facts(docs: list[dict]) -> dict[tuple[int, str], str]:
    """Model reference, storage URI, images, replicas and resources of one rendered overlay."""
    facts: dict[tuple[int, str], str] = {}
    for doc in docs:
        kind, _, name = resource_key(doc)
        where = f"{kind}/{name}"
        spec = doc.get("spec") if isinstance(doc.get("spec"), dict) else {}
        if kind == "ConfigMap" and (name == "release" or name.startswith("release-")):
            data = doc.get("data") or {}
            for rank, key, label in (
                (_VERSION, "modelVersion", "version"),
                (_DIGEST_RANK, "modelDigest", "digest"),
                (_NAME, "modelName", "name"),
            ):
                if key in data:
                    facts[(rank, f"model {label}")] = str(data[key])
            for key, label in (("pipeline", "pipeline"), ("parameters", "parameters"), ("commit", "commit")):
                if key in data:
                    facts[(_NAME, f"release {label}")] = str(data[key])
        elif kind == "InferenceService":
            for part in _ISVC_PARTS:
                section = spec.get(part)
                if not isinstance(section, dict):
                    continue
                for key in ("minReplicas", "maxReplicas"):
                    if key in section:
                        facts[(_REPLICAS, f"{where} {part} {key}")] = str(section[key])
                for key, value in section.items():
                    if isinstance(value, dict) and ("storageUri" in value or "modelFormat" in value):
                        if "storageUri" in value:
                            facts[(_STORAGE, f"{where} storageUri")] = str(value["storageUri"])
                        _container_facts(facts, where, value, key)
                for container in section.get("containers") or []:
                    _container_facts(facts, where, container, container.get("name", "?"))
        elif kind in _WORKLOADS:
            if "replicas" in spec:
                facts[(_REPLICAS, f"{where} replicas")] = str(spec["replicas"])
            pod = _pod_spec(doc)
            for group in ("initContainers", "containers"):
                for container in pod.get(group) or []:
                    _container_facts(facts, where, container, container.get("name", "?"))
        elif kind == "HorizontalPodAutoscaler":
            for key in ("minReplicas", "maxReplicas"):
                if key in spec:
                    facts[(_REPLICAS, f"{where} {key}")] = str(spec[key])
    return facts


def _short(value: str, limit: int = 72) -> str:
    value = _DIGEST.sub(r"\1\2…", value)
    return value if len(value) <= limit else value[: limit // 2 - 1] + "…" + value[-(limit // 2) :]


def _elide_common(old: str, new: str) -> tuple[str, str]:
    """`s3://bucket/models/sha256-a…` → `…/sha256-b…`: a long shared path prefix is said once."""
    cut = os.path.commonprefix([old, new]).rfind("/")
    if cut < 16:
        return old, new
    return old, "…" + new[cut:]


def _split_image(image: str) -> tuple[str, str]:
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    name, sep, tag = image.rpartition(":")
    return (name, tag) if sep and "/" not in tag else (image, "")


def headline(base: dict[tuple[int, str], str], head: dict[tuple[int, str], str]) -> list[str]:
    """'old → new' lines for the facts that differ, in rank order; one image bump is shown once."""
    lines: list[str] = []
    images: dict[tuple[str, str], int] = {}
    for key in sorted(set(base) | set(head)):
        old, new = base.get(key, "—"), head.get(key, "—")
        if old == new:
            continue
        rank, label = key
        if rank == _IMAGE:
            if not images:
                lines.append("")  # where the image lines go
            images[(old, new)] = images.get((old, new), 0) + 1
            continue
        if rank <= _NAME:
            label = re.sub(r"^(model|release) (.+)$", r"\1 **\2**", label)
        old, new = _elide_common(old, new)
        lines.append(f"{label} `{_short(old)}` → `{_short(new)}`")
    image_lines = []
    for (old, new), count in images.items():
        (old_name, old_tag), (new_name, new_tag) = _split_image(old), _split_image(new)
        times = f" ({count} containers)" if count > 1 else ""
        if old_name == new_name and "—" not in (old, new):
            image_lines.append(f"image `{_short(new_name)}` `{_short(old_tag)}` → `{_short(new_tag)}`{times}")
        else:
            image_lines.append(f"image `{_short(old)}` → `{_short(new)}`{times}")
    if "" in lines:
        at = lines.index("")
        lines[at : at + 1] = image_lines
    return lines


# --- one overlay ----------------------------------------------------------------------------


@dataclass
class OverlayDiff:
    name: str
    status: str  # changed, unchanged, new, removed, failed
    resources: list[ResourceDiff] = field(default_factory=list)
    headline: list[str] = field(default_factory=list)
    error: str | None = None  # fails to render at head
    base_error: str | None = None  # failed at base: shown as new
    because: list[str] = field(default_factory=list)  # the changed paths that affect it

    def count(self, status: str) -> int:
        return sum(1 for r in self.resources if r.status == status)


def diff_overlay(name: str, base: Rendered, head: Rendered, because: list[str]) -> OverlayDiff:
    if head.error:
        return OverlayDiff(name, "failed", error=head.error, because=because, base_error=base.error)
    if head.docs is None and base.docs is None:
        return OverlayDiff(name, "unchanged", because=because, base_error=base.error)
    resources = compare_resources(base.docs or [], head.docs or [])
    lines = headline(headline_facts(base.docs or []), headline_facts(head.docs or []))
    if head.docs is None:
        status = "removed"
    elif base.docs is None:
        status = "new"
    else:
        status = "changed" if resources else "unchanged"
    return OverlayDiff(name, status, resources, lines, because=because, base_error=base.error)


# --- pipelines ------------------------------------------------------------------------------

# One interpreter compiles both commits (kfp is imported once): the package is imported from
# base's src/, compiled, dropped from sys.modules, then imported again from head's src/.
_COMPILE = """
import importlib, json, sys
from pathlib import Path
import os
targets, results = json.loads(sys.argv[1]), {}
packages = {target.partition(":")[0].split(".")[0] for target in targets.values()}
from kfp import compiler
for side, src, out, image in zip(*[iter(sys.argv[2:])] * 4):
    src, out = Path(src).resolve(), Path(out)
    os.environ["PROJECT_IMAGE"] = image  # components read it at import
    for name in [m for m in sys.modules if m.split(".")[0] in packages]:
        del sys.modules[name]
    sys.path.insert(0, str(src))
    importlib.invalidate_caches()
    result = {}
    try:
        for name, target in sorted(targets.items()):
            module_name, _, attr = target.partition(":")
            try:
                module = importlib.import_module(module_name)
                if src not in Path(module.__file__).resolve().parents:
                    raise ImportError(f"{module_name} does not exist at this commit")
                func = getattr(module, attr)
                compiler.Compiler().compile(pipeline_func=func, package_path=str(out / f"{name}.yaml"))
                result[name] = {"file": str(out / f"{name}.yaml")}
            except Exception as exc:
                result[name] = {"error": f"{type(exc).__name__}: {exc}"}
        results[side] = {"pipelines": result}
    except Exception as exc:
        results[side] = {"error": f"{type(exc).__name__}: {exc}"}
    sys.path.remove(str(src))
print(json.dumps(results))
"""


def _start_compile(trees: dict[str, Tree], targets: dict[str, str], images: dict[str, str]) -> subprocess.Popen:
    """Compile every pipeline of both commits with this venv's python, in the background."""
    args = []
    for side, tree in trees.items():
        out = tree.root / ".compiled"
        out.mkdir(exist_ok=True)
        args += [side, str(tree.root / "src"), str(out), images[side]]
    return subprocess.Popen(
        [sys.executable, "-c", _COMPILE, json.dumps(targets), *args],
        cwd=next(iter(trees.values())).root.parent,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _compiled(proc: subprocess.Popen, trees: dict[str, Tree]) -> dict[str, dict[str, dict | str]]:
    """Per side: name -> pipeline spec, or name -> error message; {"": error} when nothing compiled."""
    stdout, stderr = proc.communicate()
    try:
        results = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        message = (stderr.strip().splitlines() or ["the pipeline compiler crashed"])[-1]
        return {side: {"": message} for side in trees}
    specs: dict[str, dict[str, dict | str]] = {}
    for side, result in results.items():
        root = f"{trees[side].root}{os.sep}"
        if "error" in result:
            specs[side] = {"": result["error"].replace(root, "")}
            continue
        specs[side] = {}
        for name, item in result["pipelines"].items():
            if "error" in item:
                specs[side][name] = item["error"].replace(root, "")
            else:
                specs[side][name] = _integers(yaml.load(Path(item["file"]).read_text(), Loader=_Loader))  # noqa: S506
    return specs


def _integers(value: Any) -> Any:
    """kfp writes integer defaults as floats (1000.0): show them as the integers they are."""
    if isinstance(value, dict):
        value = {k: _integers(v) for k, v in value.items()}
        default = value.get("defaultValue")
        if value.get("parameterType") == "NUMBER_INTEGER" and isinstance(default, float) and default.is_integer():
            value["defaultValue"] = int(default)
        return value
    if isinstance(value, list):
        return [_integers(v) for v in value]
    return value


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        if not value:
            return {prefix: {}} if prefix else {}
        out: dict[str, Any] = {}
        for key in sorted(value, key=str):
            out.update(_flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list):
        out = {}
        for i, item in enumerate(value):
            out.update(_flatten(item, f"{prefix}[{i}]"))
        return out if value else {prefix: []}
    return {prefix: value}


def _value(value: Any) -> str:
    if value is _MISSING:
        return "—"
    return "`" + _short(value if isinstance(value, str) else json.dumps(value, sort_keys=True), 60) + "`"


_MISSING = object()
_KFP_PIN = re.compile(r"kfp(==|>=|<=|~=)[0-9][0-9a-zA-Z.\-+]*")
_KFP_NOISE = re.compile(r"(?i)kfp[-_ ]?(sdk[-_ ]?)?version|sdkVersion")


def _flat_diff(old: Any, new: Any) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, _MISSING), b.get(key, _MISSING)
        if x != y and not _KFP_NOISE.search(key):
            lines.append(f"`{key}` {_value(x)} → {_value(y)}")
    return lines


def _code(container: dict) -> tuple[str, str]:
    """A component's command and args, kfp version pins masked; and their hash."""
    text = "\n".join(str(part) for part in [*(container.get("command") or []), *(container.get("args") or [])])
    text = _KFP_PIN.sub("kfp==<version>", text)
    return text, "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:12]


_MARKS = ("added", "removed", "changed")


@dataclass
class ComponentDiff:
    name: str
    status: str  # added, removed, changed
    details: list[str] = field(default_factory=list)
    code_diff: list[str] = field(default_factory=list)


@dataclass
class PipelineDiff:
    name: str
    status: str  # changed, unchanged, new, removed, failed
    parameters: list[str] = field(default_factory=list)
    components: list[ComponentDiff] = field(default_factory=list)
    other: list[str] = field(default_factory=list)  # tasks and the rest of the DAG
    error: str | None = None
    base_error: str | None = None


def _components(spec: dict) -> tuple[dict[str, dict], dict[str, str]]:
    """Each component with its executor, the code replaced by its hash; and the code texts."""
    executors = (spec.get("deploymentSpec") or {}).get("executors") or {}
    components, texts = {}, {}
    for key, definition in (spec.get("components") or {}).items():
        name = key.removeprefix("comp-")
        component = dict(definition)
        executor = dict(executors.get(component.pop("executorLabel", ""), {}))
        if isinstance(executor.get("container"), dict):
            container = dict(executor["container"])
            texts[name], container["code"] = _code(container)
            container.pop("command", None)
            container.pop("args", None)
            executor["container"] = container
        components[name] = {**component, "executor": executor}
    return components, texts


def _parameters(spec: dict) -> dict[str, dict]:
    return ((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {}


def compare_pipeline(name: str, base: dict | None, head: dict) -> PipelineDiff:
    base = base or {}
    result = PipelineDiff(name, "new" if not base else "changed")
    old_params, new_params = _parameters(base), _parameters(head)
    for param in sorted(set(old_params) | set(new_params)):
        old, new = old_params.get(param), new_params.get(param)
        if old == new:
            continue
        if old is None:
            default = f", default {_value(new.get('defaultValue'))}" if "defaultValue" in new else ""
            result.parameters.append(f"`{param}` added ({new.get('parameterType', '?')}{default})")
        elif new is None:
            result.parameters.append(f"`{param}` removed")
        else:
            for line in _flat_diff(old, new):
                result.parameters.append(f"`{param}`: {line.replace('`defaultValue`', 'default')}")
    (old_comps, old_texts), (new_comps, new_texts) = _components(base), _components(head)
    for comp in sorted(set(old_comps) | set(new_comps)):
        old, new = old_comps.get(comp), new_comps.get(comp)
        if old is None:
            image = (new["executor"].get("container") or {}).get("image")
            result.components.append(ComponentDiff(comp, "added", [f"image `{image}`"] if image else []))
        elif new is None:
            result.components.append(ComponentDiff(comp, "removed"))
        else:
            details = [_pretty_component_line(line) for line in _flat_diff(old, new)]
            details.sort(key=lambda line: line.startswith("code "))  # the code hash last: the diff shows it
            if details:
                old_text, new_text = old_texts.get(comp, "").splitlines(), new_texts.get(comp, "").splitlines()
                code = list(difflib.unified_diff(old_text, new_text, lineterm="", n=2))[2:]
                result.components.append(ComponentDiff(comp, "changed", details, code))
    if base:
        result.other = _flat_diff(_rest(base), _rest(head))
        if not (result.parameters or result.components or result.other):
            result.status = "unchanged"
    return result


def _rest(spec: dict) -> dict:
    """The pipeline without components, executors, parameters and version noise: its DAG and info."""
    rest = {k: v for k, v in spec.items() if k not in ("components", "deploymentSpec", "sdkVersion", "schemaVersion")}
    rest["root"] = {k: v for k, v in (spec.get("root") or {}).items() if k != "inputDefinitions"}
    return rest


def _pretty_component_line(line: str) -> str:
    line = re.sub(r"^`inputDefinitions\.parameters\.([^.`]+)\.defaultValue`", r"input `\1` default", line)
    line = re.sub(r"^`inputDefinitions\.parameters\.([^.`]+)`", r"input `\1`", line)
    line = re.sub(r"^`executor\.container\.code`", "code", line)
    line = re.sub(r"^`executor\.container\.image`", "image", line)
    return re.sub(r"^`executor\.container\.resources\.([^`]+)`", r"resources `\1`", line)


def diff_pipelines(base: dict[str, dict | str], head: dict[str, dict | str]) -> list[PipelineDiff]:
    diffs = []
    if "" in head:
        return [PipelineDiff("pipelines module", "failed", error=str(head[""]))]
    base_error = str(base[""]) if "" in base else None
    for name in sorted(set(base) | set(head) - {""}):
        old, new = base.get(name), head.get(name)
        if new is None:
            diffs.append(PipelineDiff(name, "removed"))
        elif isinstance(new, str):
            diffs.append(PipelineDiff(name, "failed", error=new))
        else:
            diff = compare_pipeline(name, old if isinstance(old, dict) else None, new)
            diff.base_error = old if isinstance(old, str) else base_error
            diffs.append(diff)
    return diffs


# --- the whole diff -------------------------------------------------------------------------


@dataclass
class DiffReport:
    base_ref: str
    head_ref: str
    base: str
    head: str
    changes: list[Change]
    overlays: list[OverlayDiff]
    unaffected: list[str]
    everything: str | None = None
    pipelines: list[PipelineDiff] | None = None  # None: no file under src/, pyproject.toml or Dockerfile changed
    images: dict[str, str] | None = None  # side -> the project image its pipelines were compiled against

    @property
    def failed(self) -> bool:
        return any(o.status == "failed" for o in self.overlays) or any(
            p.status == "failed" for p in self.pipelines or []
        )


def diff_refs(
    repo: Path | str,
    base_ref: str,
    head_ref: str = "HEAD",
    workers: int | None = None,
    pipelines: dict[str, str] | None = None,
    image: str | None = None,
) -> DiffReport:
    """Render what changes between two commits of the project at `repo`.

    `pipelines` are config's `pipelines:` targets; `image` the project image name (config `image:`),
    pinned per commit by its source digest."""
    repo = Path(repo).resolve()
    # Paths are the project's (it may live in a folder of a bigger repository); git reads trees from the top.
    top, prefix = _git(repo, "rev-parse", "--show-toplevel", "--show-prefix").splitlines()[:2]
    base, head = resolve(repo, base_ref, "--base"), resolve(repo, head_ref, "--head")
    changes = changed_files(repo, base, head)
    paths = {p for change in changes for p in change.paths}
    report = DiffReport(base_ref, head_ref, base, head, changes, [], [])
    if not changes:
        return report
    workers = workers or max(2, os.cpu_count() or 2)
    with tempfile.TemporaryDirectory(prefix="overlay-diff-") as tmp:
        commits = dict(zip(SIDES, (base, head), strict=True))
        parsed: dict = {}
        trees = {side: Tree(Path(top), commit, prefix, Path(tmp) / side, parsed) for side, commit in commits.items()}
        compiling: subprocess.Popen | None = None
        try:
            if any(p.startswith(PIPELINE_INPUTS) for p in paths):  # compile while the overlays render
                for tree in trees.values():
                    tree.list(PIPELINE_FILES)
                    tree.extract(PIPELINE_FILES)
                from .source import project_image

                name = image or DEFAULT_IMAGE
                report.images = {side: project_image(name, repo, commit) for side, commit in commits.items()}
                compiling = _start_compile(trees, pipelines or {}, report.images)
            affected = affected_overlays(trees["base"], trees["head"], changes)
            for tree, walker in zip(trees.values(), affected.walkers, strict=True):
                needed = needed_files(walker, affected.overlays)
                tree.extract(needed | {"deploy"} if affected.everything else needed)
            with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
                jobs = {
                    (side, name): pool.submit(render_overlay, trees[side], name)
                    for name in affected.overlays
                    for side in trees
                }
                rendered = {key: job.result() for key, job in jobs.items()}
            report.overlays = [
                diff_overlay(name, rendered[("base", name)], rendered[("head", name)], because)
                for name, because in affected.overlays.items()
            ]
            report.unaffected, report.everything = affected.unaffected, affected.everything
            if compiling:
                specs = _compiled(compiling, trees)
                report.pipelines = diff_pipelines(specs["base"], specs["head"])
        finally:
            if compiling and compiling.poll() is None:  # interrupted: the compiler dies with its folder
                compiling.kill()
                compiling.wait()
    return report


# --- markdown -------------------------------------------------------------------------------


@dataclass
class _Block:
    """One resource (or component) in a collapsible section: a title line and a fenced diff."""

    title: str
    lines: list[str]
    label: str

    def text(self) -> str:
        if not self.lines:
            return f"{self.title}\n"
        fence = _fence(self.lines)
        return f"{self.title}\n\n{fence}diff\n" + "\n".join(self.lines) + f"\n{fence}\n"


@dataclass
class _Section:
    summary: str
    intro: str
    blocks: list[_Block]
    name: str
    open: bool = False

    @functools.cached_property
    def head(self) -> str:
        return f"<details{' open' if self.open else ''}>\n<summary>{self.summary}</summary>\n\n{self.intro}"

    @functools.cached_property
    def body(self) -> list[str]:
        return [block.text() for block in self.blocks]

    @functools.cached_property
    def full(self) -> str:
        return self.head + "\n".join(self.body) + "\n</details>\n"

    def render(self, cap: int | None = None) -> tuple[str, str | None]:
        """The section, at most about `cap` characters: whole blocks first, then part of one."""
        head, tail, body = self.head, "\n</details>\n", self.body
        if cap is None or len(self.full) <= cap:
            return self.full, None
        total = sum(len(block.lines) for block in self.blocks)
        room = max(0, cap - len(head) - len(tail) - 400)  # 400: the cut note
        kept, shown = [], 0
        for i, block in enumerate(self.blocks):
            text = body[i]
            if len(text) + 1 <= room:
                kept.append(text)
                room -= len(text) + 1
                shown += len(block.lines)
                continue
            part: list[str] = []
            budget = room - len(block.title) - 30
            for line in block.lines:
                if len(line) + 1 > budget:
                    break
                part.append(line)
                budget -= len(line) + 1
            if part:
                kept.append(_Block(block.title, part, block.label).text())
                shown += len(part)
            rest = [b.label for b in self.blocks[i + (1 if part else 0) :]]
            break
        else:
            rest = []
        omitted = ", ".join(rest[:6]) + (f" and {len(rest) - 6} more" if len(rest) > 6 else "")
        note = f"\n✂️ **Cut here: {shown:,} of {total:,} diff lines shown.**"
        if omitted:
            note += f" Not shown: {omitted}."
        cut = f"**{self.name}** ({shown:,} of {total:,} lines)"
        return head + "\n".join(kept) + note + "\n" + tail, cut


def _clip(message: str, limit: int = 3000) -> str:
    """An error message, bounded: kustomize and the compiler can be verbose."""
    return message if len(message) <= limit else message[:limit] + " … (cut)"


def _fence(lines: list[str]) -> str:
    longest = max((len(m) for line in lines for m in re.findall(r"`{3,}", line)), default=0)
    return "`" * max(3, longest + 1)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _overlay_row(o: OverlayDiff) -> dict:
    notes = {
        "failed": ["❌ **fails to render at head**"],
        "new": ["🆕 new overlay" + (" (did not render at base)" if o.base_error else "")],
        "removed": ["🗑️ overlay removed"],
        "unchanged": ["no change in the rendered resources"],
    }.get(o.status, [])
    lines = notes + o.headline
    if len(lines) > 8:
        lines = [*lines[:7], f"… {len(lines) - 7} more in the diff"]
    return {
        "overlay": f"**{o.name}**",
        "added": o.count("added"),
        "removed": o.count("removed"),
        "changed": o.count("changed"),
        "headline": "<br>".join(_cell(line) for line in lines),
    }


def _overlay_section(o: OverlayDiff) -> _Section | None:
    if o.status == "unchanged" and not o.base_error:
        return None
    counts = [f"{o.count(s)} {s}" for s in ("added", "removed", "changed") if o.count(s)]
    summary = f"<b>{o.name}</b>: " + (", ".join(counts) if counts else o.status)
    if o.status == "failed":
        summary = f"❌ <b>{o.name}</b>: fails to render at head"
    intro = ""
    if o.because:
        intro += f"Affected by {_names([f'`{p}`' for p in o.because], 5)}.\n\n"
    if o.error:
        intro += f"kustomize failed at head:\n\n```text\n{_clip(o.error)}\n```\n\n"
    if o.base_error:
        why = "It did not render at base either" if o.error else "Did not render at base, so every resource is new"
        intro += f"{why}:\n\n```text\n{_clip(o.base_error)}\n```\n\n"
    blocks = []
    for r in o.resources:
        title = f"**{r.status}** `{resource_label(r.key)}`"
        if r.renamed_from:
            title += f" (was `{r.renamed_from}`)"
        blocks.append(_Block(title, r.diff, f"`{resource_label(r.key)}`"))
    return _Section(summary, intro, blocks, o.name, open=o.status == "failed")


def _pipeline_row(p: PipelineDiff) -> dict:
    lines = {
        "failed": ["❌ **does not compile at head**"],
        "new": ["🆕 new pipeline"],
        "removed": ["🗑️ pipeline removed"],
    }
    lines = lines.get(p.status, []) + [f"parameter {line}" for line in p.parameters]
    for c in p.components:
        if c.status == "changed":
            lines += [f"`{c.name}`: {detail}" for detail in c.details]
    if len(lines) > 8:
        lines = [*lines[:7], f"… {len(lines) - 7} more below"]
    count = {status: ", ".join(f"`{c.name}`" for c in p.components if c.status == status) or "0" for status in _MARKS}
    return {"pipeline": f"**{p.name}**", **count, "headline": "<br>".join(_cell(line) for line in lines)}


def _pipeline_section(p: PipelineDiff) -> _Section | None:
    if p.status in ("unchanged", "removed") and not p.base_error:
        return None
    intro = ""
    if p.error:
        intro += f"The pipeline does not compile at head:\n\n```text\n{_clip(p.error)}\n```\n\n"
    if p.base_error:
        why = "It did not compile at base either" if p.error else "Did not compile at base, so it is shown as new"
        intro += f"{why}:\n\n```text\n{_clip(p.base_error)}\n```\n\n"
    if p.parameters:
        intro += "Parameters:\n" + "".join(f"- {line}\n" for line in p.parameters) + "\n"
    if p.other:
        intro += "Tasks and DAG:\n" + "".join(f"- {line}\n" for line in p.other[:40])
        intro += f"- … {len(p.other) - 40} more\n\n" if len(p.other) > 40 else "\n"
    blocks = []
    for c in p.components:
        title = f"**{c.status}** component `{c.name}`" + "".join(f"\n- {line}" for line in c.details)
        blocks.append(_Block(title, c.code_diff, f"component `{c.name}`"))
    summary = f"<b>{p.name}</b> pipeline: {p.status}"
    if p.status == "failed":
        summary = f"❌ <b>{p.name}</b>: does not compile at head"
    return _Section(summary, intro, blocks, f"{p.name} pipeline", open=p.status == "failed")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _names(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _header(report: DiffReport) -> str:
    what = "Overlay and pipeline diff" if report.pipelines is not None else "Overlay diff"
    title = f"### {what} `{report.base[:7]}` → `{report.head[:7]}`\n\n"
    if not report.changes:
        return title + "No file changed between these commits.\n"
    parts = [title]
    changed = [o for o in report.overlays if o.status != "unchanged"]
    if report.overlays:
        parts.append(
            f"{_count(len(report.overlays), 'overlay')} rendered at base and head, {len(changed)} with changes."
            + (f" Every overlay was rendered: {report.everything}." if report.everything else "")
            + "\n\n"
        )
        columns = ["overlay", "added", "removed", "changed", "headline"]
        parts.append(table([_overlay_row(o) for o in report.overlays], columns))
        parts.append("\n\n")
    elif report.unaffected:
        parts.append(
            f"No overlay is affected (no file a kustomization reads changed): {_names(report.unaffected)}.\n\n"
        )
    else:
        parts.append("This repository has no overlay at either commit.\n\n")
    if report.overlays and report.unaffected:
        parts.append(f"Not affected, not rendered: {_names(report.unaffected)}.\n\n")
    return "".join(parts)


def _pipeline_header(report: DiffReport) -> str:
    if report.pipelines is None:
        return ""
    changed = [p for p in report.pipelines if p.status != "unchanged"]
    same = [p.name for p in report.pipelines if p.status == "unchanged"]
    text = "### Compiled pipelines\n\n"
    images = report.images or {}
    if images and images.get("base") != images.get("head"):
        old, new = images["base"], images["head"]
        text += (
            f"The project image changes: `{_short(old)}` → `{_short(new)}` (its digest: the source digest of "
            "src/, pyproject.toml and Dockerfile locally, the pushed image on the cluster), so every component "
            "runs new code and the next release names this image.\n\n"
        )
    if changed:
        text += "Components added, removed and changed, and what a reviewer checks first:\n\n"
        text += table([_pipeline_row(p) for p in changed], ["pipeline", *_MARKS, "headline"]) + "\n\n"
    if same:
        text += f"Compiled identically (components and parameters): {', '.join(same)}.\n\n"
    return text


def to_markdown(report: DiffReport, max_chars: int | None = DEFAULT_MAX_CHARS, full_url: str | None = None) -> str:
    """GitHub markdown; with max_chars, the longest sections are cut first until it fits."""
    header, pipeline_header = _header(report), _pipeline_header(report)
    overlay_sections = [s for s in map(_overlay_section, report.overlays) if s]
    sections = overlay_sections + [s for s in map(_pipeline_section, report.pipelines or []) if s]
    where = f"[the full diff]({full_url})" if full_url else "the full diff"

    def assemble(cap: int | None, keep: int = len(sections)) -> str:
        rendered = [s.render(cap) for s in sections[:keep]]
        cuts = [cut for _, cut in rendered if cut] + [f"**{s.name}** (left out)" for s in sections[keep:]]
        if len(cuts) > 12:
            cuts = [*cuts[:12], f"and {len(cuts) - 12} more"]
        note = ""
        if cuts:
            note = (
                f"> [!WARNING]\n> Cut to fit GitHub's {GITHUB_COMMENT_LIMIT:,}-character comment limit, longest "
                f"sections first: {', '.join(cuts)}. Read {where} in this run's job summary or its artifact "
                "(`build/diff-full.md`).\n\n"
            )
        texts = [text for text, _ in rendered]
        overlays_text = "\n".join(texts[: len(overlay_sections)])
        out = header + note + overlays_text + ("\n" if overlays_text else "")
        out += pipeline_header + "\n".join(texts[len(overlay_sections) :])
        return out.rstrip("\n") + "\n"

    full = assemble(None)
    if max_chars is None or len(full) <= max_chars:
        return full
    # The largest per-section cap that fits: long sections shrink first, short ones stay whole.
    low, high, best = 0, max(len(s.full) for s in sections) if sections else 0, None
    while low <= high:
        cap = (low + high) // 2
        text = assemble(cap)
        if len(text) <= max_chars:
            best, low = text, cap + 1
        else:
            high = cap - 1
    keep = len(sections)
    while best is None and keep > 0:  # too many sections even when cut: leave out the last ones
        keep -= 1
        text = assemble(0, keep)
        best = text if len(text) <= max_chars else None
    if best is None:  # the summary table alone is too long: cut it at a line
        cut = assemble(0, 0)[: max_chars - 300].rsplit("\n", 1)[0]
        best = f"{cut}\n\n> [!WARNING]\n> Cut to fit GitHub's comment limit: read {where} (`build/diff-full.md`).\n"
    return best
