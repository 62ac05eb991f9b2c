"""Provenance: production serves a release only when it can prove where its model came from.

A production release is servable when
- it is the release committed on `main` (no uncommitted edit, no other branch);
- its gates passed (`data.gates: passed`);
- its model came from the promotion path of the pattern: `transit` — `modelSource` names a staging
  version (`staging:<name>/<version>`, the same version as `modelVersion`) whose digest is the
  release's and whose gates passed; `retrain` — `modelSource` names a production version that the
  production flow trained with the promoted pipeline (`validated_by` tag, `pipeline_version` equal to
  the release's pipeline), with the release's digest and passed gates;
- it does not name a model that a rollback took out of production, unless `promote --again` was
  given for it (recorded as the `promoted_again` tag of the staging version): one override.

A retrain promotion (pipeline named, `modelVersion: none`) is checked the same way for its pipeline:
the staging version in `modelSource` passed its gates and ran that pipeline with that image.

The production flow, `serve --env production`, `merge` and the pull-request check
(`mlrail verify-release --base <ref>`) run these checks; a refusal is one line naming the file, the
field and the reason (exit code 4), and nothing is copied, registered or served.
"""

from __future__ import annotations

from collections.abc import Callable

from . import gitops
from .config import Config
from .errors import MlopsError
from .release import RELEASE_FILE, Release, ReleaseError, parse_source, release_from_text

BASE_BRANCH = "main"
TAG_GATES = "gates"
TAG_PIPELINE = "pipeline_version"
TAG_IMAGE = "image"
TAG_VALIDATED_BY = "validated_by"
TAG_AGAIN = "promoted_again"  # set by `promote --again`: the one override of a rollback
ROLLBACK_SUBJECTS = ("Roll back ", "Revert ")  # commit subjects of rollback PRs (and of `git revert`)


class ProvenanceError(MlopsError):
    """The release cannot be served or merged: it names a model production cannot trace to its promotion."""

    exit_code = 4


def _registry(cfg: Config, env_name: str, where: str):
    """The environment's registry, without creating one: a check never changes the state it checks."""
    from .registry import Registry, RegistryError

    env = cfg.env(env_name)
    if env.backend == "local" and not (env.local_dir / "registry.db").is_file():
        raise ProvenanceError(
            f"{where}: the {env_name} registry {env.local_dir / 'registry.db'} does not exist, so the model "
            "cannot be traced to its registration"
        )
    try:
        return Registry(env, cfg.model_name)
    except RegistryError as exc:
        raise ProvenanceError(f"{where}: {exc}") from None


def _version(cfg: Config, env_name: str, version: str, where: str, field: str):
    from .registry import RegistryError

    registry = _registry(cfg, env_name, where)
    try:
        found = registry.find(version)
    except RegistryError as exc:  # unreachable, locked, ...: the check cannot decide, so it refuses
        raise ProvenanceError(f"{where}: cannot check data.{field} against the {env_name} registry: {exc}") from None
    if found is None:
        raise ProvenanceError(
            f"{where}: data.{field} names {env_name} v{version}, which the {env_name} registry does not have"
        )
    return found


def rolled_back_digests(cfg: Config, path: str, ref: str = "HEAD") -> dict[str, str]:
    """digest -> commit of every model a rollback (a `Roll back`/`Revert` commit) took out of `path` at `ref`."""
    found: dict[str, str] = {}
    log = gitops.file_log(cfg.root, path, ref)
    # oldest first: each rollback commit replaces the model of the revision before it
    for (_, _, before), (commit, subject, _) in zip(reversed(log[1:]), reversed(log[:-1]), strict=True):
        if not subject.startswith(ROLLBACK_SUBJECTS) or before is None:
            continue
        try:
            previous = release_from_text(before, path)
        except ReleaseError:
            continue
        if not previous.model.is_empty:
            found.setdefault(previous.model.digest, commit)
    return found


def verify_production(cfg: Config, release: Release, where: str, history_ref: str = "HEAD") -> None:
    """Raise ProvenanceError unless production may serve (or, without a model, retrain) `release`."""
    model = release.model
    if model.is_empty:
        if cfg.promotion == "retrain" and release.has_pipeline:
            _verify_promoted_pipeline(cfg, release, where)
        return
    if release.gates != "passed":
        raise ProvenanceError(
            f"{where}: data.gates is {release.gates!r}; production serves only a model whose gates passed"
        )
    try:
        source_env, source_name, source_version = parse_source(model.source, f"{where}: data.modelSource")
    except ReleaseError as exc:
        raise ProvenanceError(str(exc)) from None
    if source_name != model.name or model.name != cfg.model_name:
        raise ProvenanceError(
            f"{where}: data.modelSource names model {source_name!r} and data.modelName is {model.name!r}; "
            f"expected {cfg.model_name!r} (model_name in config/environments.yaml)"
        )
    expected = "staging" if cfg.promotion == "transit" else "production"
    if source_env != expected:
        how = (
            "a transit production serves only a model validated in staging"
            if expected == "staging"
            else "a retrain production serves only a model it trained itself from the promoted pipeline"
        )
        raise ProvenanceError(
            f"{where}: data.modelSource is {model.source!r}; {how} ({expected}:{cfg.model_name}/<version>)"
        )
    if model.version != source_version:
        raise ProvenanceError(
            f"{where}: data.modelVersion is {model.version!r} but data.modelSource names {expected} "
            f"v{source_version}; they must name the same registry version"
        )
    mv = _version(cfg, source_env, source_version, where, "modelVersion")
    if mv.digest != model.digest:
        raise ProvenanceError(
            f"{where}: data.modelDigest is {model.digest} but {source_env} v{mv.version} holds {mv.digest}"
        )
    if mv.tags.get(TAG_GATES) != "passed":
        verdict = mv.tags.get(TAG_GATES, "never judged")
        raise ProvenanceError(
            f"{where}: data.modelSource names {source_env} v{mv.version}, whose gates {verdict}; "
            "production serves only a version that passed them"
        )
    override = mv
    if expected == "production":
        validated_by = mv.tags.get(TAG_VALIDATED_BY)
        if not validated_by or mv.tags.get(TAG_PIPELINE) != release.pipeline:
            raise ProvenanceError(
                f"{where}: data.modelSource names production v{mv.version}, which the production flow did not "
                f"train from the promoted pipeline {release.pipeline[:19]} (its pipeline_version is "
                f"{mv.tags.get(TAG_PIPELINE, 'missing')[:19]}, validated_by {validated_by or 'missing'})"
            )
        override = _validating_version(cfg, validated_by) or mv
    _refuse_rolled_back(cfg, model.digest, where, history_ref, override, mv)


def _validating_version(cfg: Config, source: str):
    """The staging version a retrained production version names in `validated_by`, if it still exists."""
    from .registry import RegistryError

    try:
        env_name, _, version = parse_source(source)
        return _registry(cfg, env_name, source).get(version)
    except (ReleaseError, ProvenanceError, RegistryError):
        return None


def _refuse_rolled_back(cfg: Config, digest: str, where: str, ref: str, *versions) -> None:
    path = f"{cfg.env('production').overlay}/{RELEASE_FILE}"
    rolled = rolled_back_digests(cfg, path, ref)
    if digest in rolled and not any(TAG_AGAIN in mv.tags for mv in versions):
        raise ProvenanceError(
            f"{where}: data.modelDigest {digest[:19]} was rolled back out of production (commit "
            f"{rolled[digest][:12]}); promote it again only on purpose with `mlrail promote --again`"
        )


def _verify_promoted_pipeline(cfg: Config, release: Release, where: str) -> None:
    """retrain: the pipeline production will train is the one a staging version validated."""
    try:
        source_env, _, source_version = parse_source(release.model.source, f"{where}: data.modelSource")
    except ReleaseError as exc:
        raise ProvenanceError(str(exc)) from None
    if source_env != "staging":
        raise ProvenanceError(
            f"{where}: data.modelSource is {release.model.source!r}; a retrain promotion names the staging "
            f"version that validated the pipeline (staging:{cfg.model_name}/<version>)"
        )
    mv = _version(cfg, "staging", source_version, where, "modelSource")
    if mv.tags.get(TAG_GATES) != "passed":
        raise ProvenanceError(
            f"{where}: data.modelSource names staging v{mv.version}, whose gates {mv.tags.get(TAG_GATES, 'never ran')}"
            "; only a pipeline that passed staging's gates is promoted"
        )
    for field, tag, value in (("pipeline", TAG_PIPELINE, release.pipeline), ("image", TAG_IMAGE, release.image)):
        if mv.tags.get(tag) != value:
            raise ProvenanceError(
                f"{where}: data.{field} is {value!r} but staging v{mv.version} ran "
                f"{mv.tags.get(tag, 'nothing recorded')!r}"
            )


def verify_staging(cfg: Config, release: Release, where: str) -> None:
    """A staging release names a staging version with its digest (gates may have failed: staging records both)."""
    model = release.model
    if model.is_empty:
        return
    try:
        source_env, _, source_version = parse_source(model.source, f"{where}: data.modelSource")
    except ReleaseError as exc:
        raise ProvenanceError(str(exc)) from None
    if source_env != "staging" or source_version != model.version:
        raise ProvenanceError(
            f"{where}: data.modelSource is {model.source!r}; staging's release names its own version "
            f"(staging:{model.name}/{model.version})"
        )
    mv = _version(cfg, "staging", model.version, where, "modelVersion")
    if mv.digest != model.digest:
        raise ProvenanceError(
            f"{where}: data.modelDigest is {model.digest} but staging v{mv.version} holds {mv.digest}"
        )


def verify_text(cfg: Config, env_name: str, text: str, where: str, history_ref: str = "HEAD") -> Release:
    """Parse and verify one environment's release text; returns the release."""
    try:
        release = release_from_text(text, where)
    except ReleaseError as exc:
        raise ProvenanceError(str(exc)) from None
    if env_name == "production":
        verify_production(cfg, release, where, history_ref)
    elif env_name == "staging":
        verify_staging(cfg, release, where)
    return release


def release_env(cfg: Config, path: str) -> str | None:
    """The environment whose release.yaml `path` is, or None."""
    for name, env in cfg.environments.items():
        if path == f"{env.overlay}/{RELEASE_FILE}":
            return name
    return None


def verify_committed(cfg: Config, env_name: str = "production") -> Release:
    """The environment's release as committed on main, verified: what the production flow serves."""
    path = f"{cfg.env(env_name).overlay}/{RELEASE_FILE}"
    text = gitops.show(cfg.root, "HEAD", path)
    if text is None:
        raise ProvenanceError(f"{path}: not committed on {BASE_BRANCH}; commit the overlay's release first")
    working = cfg.root / path
    if working.is_file() and working.read_text() != text:
        raise ProvenanceError(
            f"{path}: has uncommitted changes; {env_name} serves only the release committed on {BASE_BRANCH} "
            "(change it through a pull request, or discard the edit)"
        )
    main = gitops.show(cfg.root, f"refs/heads/{BASE_BRANCH}", path)
    if main is not None and main != text:
        raise ProvenanceError(
            f"{path}: the checked-out release differs from the one on {BASE_BRANCH}; {env_name} serves only "
            f"{BASE_BRANCH}'s (check out {BASE_BRANCH})"
        )
    return verify_text(cfg, env_name, text, f"{path} at HEAD")


def verify_changed(cfg: Config, base: str, head: str = "HEAD") -> list[tuple[str, Release]]:
    """The PR check: verify every release.yaml that `head` changes relative to `base`; returns them."""
    checked = []
    for path in gitops.diff_paths(cfg.root, base, head):
        env_name = release_env(cfg, path)
        if env_name is None:
            continue
        text = gitops.show(cfg.root, head, path)
        if text is None:
            raise ProvenanceError(f"{path}: deleted by this change; every overlay declares its release there")
        checked.append((path, verify_text(cfg, env_name, text, f"{path} at {head[:12]}", head)))
    return checked


def check_summary(
    cfg: Config, checked: list[tuple[str, Release]], base: str, head: str, refusal: str | None = None
) -> str:
    """The PR check's verdict as markdown, for the job summary a reviewer reads."""
    lines = ["## Release check", ""]
    if refusal is not None:
        lines += [
            f"**Refused** (exit {ProvenanceError.exit_code}): {refusal}",
            "",
            "Production would refuse this release too: fix the file, or let the flows write it "
            "(a promotion, deployment or rollback PR).",
        ]
    elif not checked:
        lines.append(f"No `release.yaml` changed between `{base[:12]}` and `{head[:12]}`: nothing to verify.")
    else:
        lines += [
            f"Every `release.yaml` changed between `{base[:12]}` and `{head[:12]}` traces to its promotion "
            "in the registries.",
            "",
            "| file | environment | model | source | gates |",
            "|---|---|---|---|---|",
        ]
        for path, release in checked:
            model = "none" if release.model.is_empty else f"{release.model.name} v{release.model.version}"
            env = release_env(cfg, path)
            lines.append(f"| `{path}` | {env} | {model} | `{release.model.source}` | {release.gates} |")
    return "\n".join(lines) + "\n"


def pull_request_check(cfg: Config) -> Callable[[gitops.PullRequest], None]:
    """The check `merge` runs before it publishes: the PR's release files, verified at its head."""

    def check(pr: gitops.PullRequest) -> None:
        for path in pr.files:
            env_name = release_env(cfg, path)
            if env_name is None:
                continue
            text = gitops.show(cfg.root, pr.head, path) if pr.head else None
            if text is None:
                raise ProvenanceError(f"{path}: pull request #{pr.number} has no readable content for it")
            verify_text(cfg, env_name, text, f"{path} in pull request #{pr.number}", pr.head)

    return check


def merge(cfg: Config, number: int, pulls: gitops.PullRequests | None = None) -> gitops.PullRequest:
    """Merge a pull request after verifying its releases (local backend: before the remote moves)."""
    pulls = pulls or gitops.pull_requests(cfg)
    check = pull_request_check(cfg)
    if isinstance(pulls, gitops.LocalPullRequests):
        return pulls.merge(number, check=check)
    check(pulls.get(number))
    return pulls.merge(number)


def served_elsewhere(cfg: Config, release: Release, where: str) -> str | None:
    """`modelVersion: none` while the local production endpoint still serves a model: a one-line
    explanation (None when nothing serves, or on the cluster, where Argo CD reconciles the overlay)."""
    from . import serving

    env = cfg.env("production")
    if env.backend != "local" or not env.serving:
        return None
    status = serving.endpoint(cfg, "production").status()
    if status is None:
        return None
    return (
        f"{where}: data.modelVersion is none but the production endpoint {status.url} still serves "
        f"v{status.version} ({status.digest[:19]})"
    )


__all__ = [
    "ProvenanceError",
    "check_summary",
    "merge",
    "pull_request_check",
    "rolled_back_digests",
    "served_elsewhere",
    "verify_changed",
    "verify_committed",
    "verify_production",
    "verify_text",
]
