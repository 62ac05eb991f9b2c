"""The life of a model: the sandbox, staging and production flows, gates, promotion PRs, rollback.

Everything an environment runs is named by its release, `deploy/overlays/<env>/release.yaml`
(mlrail.release): commit, image by digest, source digest, pipeline hash and parameters, data
snapshot, model, metrics and gate verdict.

- sandbox: features + training, stored and registered in the sandbox (experiments).
- staging (on merge to main): compile against the project image (`<image>@<digest>`, the source
  digest locally), features + training, store, register with lineage, write staging's release,
  serve the test endpoint from it, smoke-test it, evaluate the gates, mark the version
  `challenger`, open or update the promotion PR.
- promotion PR: `transit` copies staging's release into production's (the model addressed in
  production's store, its source the staging version); `retrain` writes production's release with
  staging's commit, image, pipeline hash and parameters and no model yet. Both also carry
  staging's release, so main records what staging validated.
- production (on merge, a reconcile): `retrain` first trains exactly the release's pipeline in
  production (same image, refusing a different content hash; locally the same source digest),
  registers, gates against the champion and opens the deployment PR that fills the model into the
  release (merged at once when `auto_merge`). Then, for both patterns, the model the release names
  is copied in if missing (transit), verified, registered with lineage, made `champion` and served.
  Serving never switches to a model that is missing or whose digest differs.
- rollback: a PR reverting production's release.yaml to the release it named before.

Every step is idempotent (content-addressed store, registration by digest, PRs by branch), so a
rerun after a crash anywhere converges. Progress records in `.mlops/<env>/flows/` let a rerun skip
training that already finished; correctness does not depend on them (training is deterministic).

Fault injection (tests, demos of recovery): `MLOPS_FAULT=<flow>:<step>` makes the flow fail
right after that step completes, e.g. `MLOPS_FAULT=staging:register`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from . import gitops
from .config import Config, Environment
from .errors import MlopsError
from .fsutil import atomic_write_text
from .release import (
    NONE,
    RELEASE_FILE,
    ModelRef,
    Release,
    ReleaseError,
    parse_source,
    portable_uri,
    read_release,
    release_from_text,
    render_like,
    resolve_uri,
    source_of,
    write_release,
)

FAULT_VAR = "MLOPS_FAULT"
BASE_BRANCH = "main"
PROMOTE_PREFIX = "promote/"
DEPLOY_PREFIX = "deploy/"
ROLLBACK_PREFIX = "rollback/"
TAG_GATES = "gates"  # passed | failed, set on the version the gates judged
TAG_SMOKE_P95 = "smoke.p95_ms"
TAG_PARAM_PREFIX = "param."
TAG_VALIDATED_BY = "validated_by"  # retrain: the staging version that validated the pipeline
# What a registered version needs to be turned back into its release:
TAG_IMAGE = "image"  # <image>@sha256:... the pipelines were compiled against
TAG_SOURCE_DIGEST = "source_digest"  # mlrail.source.source_digest at the commit
TAG_PARAMETERS = "parameters"  # JSON: pipeline -> name -> value, as the run passed them
# Code that decides what a model is (what the image holds): staging and production train committed code only.
MODEL_CODE_PATHS = ("src", "pyproject.toml", "Dockerfile")
STAGING_FLOW_STEPS = (
    "compile",
    "features",
    "training",
    "store",
    "register",
    "release",
    "deploy",
    "smoke",
    "gates",
    "challenger",
    "pull-request",
)
PRODUCTION_SERVE_STEPS = ("copy", "register", "champion", "deploy", "smoke")
RETRAIN_STEPS = (
    "verify-pipeline",
    "features",
    "training",
    "store",
    "register-trained",
    "gates",
    "challenger",
    "pull-request",
    "merge",
)


class PromotionError(MlopsError):
    """A flow cannot go on; the message names the environment, the model and what to do."""


class GateFailure(PromotionError):
    """The candidate failed a gate; the flow's report (with the gate table) is attached."""

    def __init__(self, message: str, report: FlowReport):
        super().__init__(message)
        self.report = report


class InjectedFault(PromotionError):
    """Raised by the MLOPS_FAULT hook: a deliberate crash between two steps."""


# --- reports ---------------------------------------------------------------------------------


@dataclass
class StepRecord:
    step: str
    seconds: float = 0.0
    status: str = "done"  # done | skipped | failed
    detail: str = ""


@dataclass
class FlowReport:
    flow: str
    env: str
    pattern: str
    steps: list[StepRecord] = field(default_factory=list)
    # seconds inside training steps, registry calls and server start-up, and the whole flow
    timings: dict[str, float] = field(default_factory=lambda: {"training": 0.0, "registry": 0.0, "serving": 0.0})
    model: dict[str, Any] | None = None
    gates: list[dict[str, Any]] = field(default_factory=list)
    smoke: dict[str, Any] | None = None
    pull_request: dict[str, Any] | None = None
    endpoint: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Flow:
    """Runs named steps, timing them, recording them in a report, and honouring MLOPS_FAULT."""

    def __init__(self, name: str, env: str, pattern: str):
        self.name = name
        self.report = FlowReport(flow=name, env=env, pattern=pattern)
        self._registries: list[Any] = []
        self._registry_setup = 0.0
        self._started = time.perf_counter()

    @contextlib.contextmanager
    def step(self, name: str, category: str | None = None) -> Iterator[StepRecord]:
        record = StepRecord(name)
        started = time.perf_counter()
        try:
            yield record
        except BaseException:
            record.status = "failed"
            raise
        finally:
            record.seconds = round(time.perf_counter() - started, 3)
            if category:
                self.report.timings[category] = round(self.report.timings.get(category, 0.0) + record.seconds, 3)
            self.report.steps.append(record)
        fault(self.name, name)

    def skip(self, name: str, detail: str) -> None:
        self.report.steps.append(StepRecord(name, 0.0, "skipped", detail))

    def registry(self, env: Environment, model_name: str):
        from .registry import Registry

        started = time.perf_counter()
        registry = Registry(env, model_name)  # opening a registry (a new SQLite one migrates) is registry time too
        self._registry_setup += time.perf_counter() - started
        self._registries.append(registry)
        return registry

    def finish(self) -> FlowReport:
        # Registry time is the sum of the calls themselves (each Registry records its own).
        calls = sum(seconds for registry in self._registries for _, seconds in registry.calls)
        self.report.timings["registry"] = round(self._registry_setup + calls, 3)
        self.report.timings["total"] = round(time.perf_counter() - self._started, 3)
        return self.report


def fault(flow: str, step: str) -> None:
    """The fault-injection hook: MLOPS_FAULT=<flow>:<step> fails the flow right after that step."""
    wanted = os.environ.get(FAULT_VAR, "").strip()
    if wanted and wanted == f"{flow}:{step}":
        raise InjectedFault(f"injected fault after {flow} step {step!r} ({FAULT_VAR}={wanted}); rerun to converge")


def holds(env_name: str):
    """Run the decorated flow `fn(cfg, ...)` holding `env_name` (mlrail.locking): one run per environment
    at a time, like the workflows' concurrency groups."""
    import functools

    def wrap(fn):
        @functools.wraps(fn)
        def run(cfg: Config, *args, **kwargs):
            from .locking import environment_lock

            with environment_lock(cfg.env(env_name), fn.__name__):
                return fn(cfg, *args, **kwargs)

        return run

    return wrap


# --- progress records --------------------------------------------------------------------------


class Progress:
    """What a flow already finished for one input key (`.mlops/<env>/flows/<flow>.json`)."""

    def __init__(self, env: Environment, flow: str, key: dict[str, Any]):
        self.path = env.local_dir / "flows" / f"{flow}.json"
        self.key = key
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            data = {}
        self.steps: dict[str, Any] = data.get("steps", {}) if data.get("key") == key else {}

    def get(self, step: str) -> Any:
        return self.steps.get(step)

    def save(self, step: str, value: Any) -> None:
        self.steps[step] = value
        atomic_write_text(self.path, json.dumps({"key": self.key, "steps": self.steps}, indent=2, sort_keys=True))


# --- pipelines and training ------------------------------------------------------------------


def compile_pipelines(cfg: Config, image: str | None = None) -> dict[str, str]:
    """Compile every pipeline into build/pipelines; returns each one's content hash and their combined version.

    `image` (`<image>@<digest>`) is what the components run in: it is part of the compiled pipelines,
    so a change to the code the image holds changes their hash."""
    from . import pipelines
    from .compile import compile_all, pipeline_version

    compiled = compile_all(pipelines.load(cfg.root, cfg.pipelines, image=image), cfg.root / "build" / "pipelines")
    versions = {name: pipeline_version(path) for name, path in compiled.items()}
    return {**versions, "pipeline": combined_version(versions)}


def combined_version(versions: dict[str, str]) -> str:
    """One pipeline version for the features + training pair: a hash over their content hashes."""
    text = "\n".join(f"{name}={versions[name]}" for name in sorted(versions) if name != "pipeline")
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def committed_head(cfg: Config, flow: str) -> str:
    """HEAD, refusing uncommitted model code: every staging/production model traces to a commit."""
    commit = gitops.head_commit(cfg.root)
    dirty = uncommitted(cfg, MODEL_CODE_PATHS)
    if dirty:
        first = dirty[0]
        raise PromotionError(
            f"{flow} trains committed code only, but {first} has uncommitted changes: commit them "
            "(or try them in the sandbox with `make sandbox`)"
        )
    return commit


def uncommitted(cfg: Config, paths: tuple[str, ...]) -> list[str]:
    """Paths under `paths` with uncommitted changes (staged, unstaged or untracked)."""
    return gitops.uncommitted_paths(cfg.root, paths)


def _record_verdict(flow, step, registry, mv, results: list, env_name: str, extra_tags: dict | None = None) -> None:
    """Tag the judged version with the gates' verdict; a failure stops the flow with the table."""
    flow.report.gates = [r.row() for r in results]
    passed = all(r.passed for r in results)
    registry.set_tags(mv.version, {TAG_GATES: "passed" if passed else "failed", **(extra_tags or {})})
    step.detail = f"{sum(r.passed for r in results)}/{len(results)} passed"
    if not passed:
        raise GateFailure(_gate_message(env_name, f"{mv.name} v{mv.version}", results), flow.finish())


def _mark_challenger(flow, registry, mv) -> None:
    with flow.step("challenger") as step:
        if "challenger" not in registry.get(mv.version).aliases:
            registry.set_alias("challenger", mv.version)
        step.detail = f"challenger -> v{mv.version}"


def _train(
    flow: Flow,
    cfg: Config,
    env: Environment,
    params: dict[str, Any],
    key: dict[str, Any],
    feature_params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Features then training, skipped when a finished run for the same key still exists.

    `params` is the training pipeline's full parameter set (see `_params`); the feature
    pipeline's come from config for `env`, and both are part of the key."""
    from . import runner

    if feature_params is None:  # retrain passes the release's: exactly what staging ran
        feature_params = cfg.parameters("features", env.name)
    progress = Progress(env, flow.name, {**key, "feature_params": feature_params})
    done = progress.get("training")
    if done and Path(done["model_uri"]).is_dir():
        flow.skip("features", f"finished earlier: {done['snapshot'][:19]}")
        flow.skip("training", f"finished earlier: {done['model_uri']}")
        return done
    # The packages this flow compiled (compile_pipelines): uploaded as they are, never compiled again.
    packages = {name: cfg.root / "build" / "pipelines" / f"{name}.yaml" for name in ("features", "training")}
    packages = {name: path if path.is_file() else None for name, path in packages.items()}
    with flow.step("features", "training") as step:
        pipelines = cfg.load_pipelines()
        features = runner.run_features(env, pipelines, feature_params, package=packages["features"])
        step.detail = f"{features.rows} rows, snapshot {features.snapshot[:19]}"
    with flow.step("training", "training") as step:
        trained = runner.run_training(env, pipelines, features.features_uri, params, package=packages["training"])
        step.detail = ", ".join(f"{k} {v:.3f}" for k, v in trained.metrics.items() if k != "test_rows")
        done = {
            "model_uri": trained.model_uri,
            "metrics": trained.metrics,
            "snapshot": trained.snapshot,
            "params": trained.params,
        }
        progress.save("training", done)
    return done


def _params(
    cfg: Config,
    env: Environment,
    overrides: dict[str, Any] | None = None,
    promoted: dict[str, Any] | None = None,
    where: str = "",
) -> dict[str, Any]:
    """The training pipeline's full parameter set for a run in `env`, checked before anything runs.

    Sandbox and staging: `training.parameters`, the environment's overrides, then `overrides`
    (`--param`). Retrain: exactly the `promoted` parameters staging validated (from `where`), so
    production forwards every one of them and config cannot change what was validated. Names
    are checked against the pipeline's declared parameters, values cast to their types, and the
    declared defaults filled in, so the registry and the release record the whole set."""
    from . import runner

    if promoted is not None:
        given = dict(promoted)
        sources = {name: f"{where}: parameters.{name}" for name in given}
    else:
        given = cfg.parameters("training", env.name)
        sources = cfg.parameter_sources("training", env.name)
        for name, value in (overrides or {}).items():
            given[name], sources[name] = value, f"--param {name}"
    return runner.bind(cfg.load_pipelines(), "training", given, sources)


def _param_tag(value: Any) -> str:
    """A parameter as a registry tag: JSON, so its type survives the trip to production."""
    return json.dumps(value, sort_keys=True)


def params_from_tags(tags: dict[str, str]) -> dict[str, Any]:
    """The `param.<name>` tags of a version, with their types (tags written before JSON as-is)."""
    params = {}
    for key, value in sorted(tags.items()):
        if key.startswith(TAG_PARAM_PREFIX):
            try:
                params[key[len(TAG_PARAM_PREFIX) :]] = json.loads(value)
            except json.JSONDecodeError:
                params[key[len(TAG_PARAM_PREFIX) :]] = value
    return params


def _lineage(commit: str, versions: dict[str, str], trained: dict[str, Any], **extra: str) -> dict[str, str]:
    from .registry import lineage_tags

    params = {f"{TAG_PARAM_PREFIX}{k}": _param_tag(v) for k, v in trained["params"].items()}
    metrics = {k: v for k, v in trained["metrics"].items() if k != "test_rows"}
    return lineage_tags(
        git_commit=commit,
        pipeline_version=versions["pipeline"],
        data_snapshot=trained["snapshot"],
        metrics=metrics,
        **params,
        **extra,
    )


def _model_summary(mv, env: str) -> dict[str, Any]:
    return {
        "env": env,
        "name": mv.name,
        "version": mv.version,
        "digest": mv.digest,
        "storage_uri": mv.source,
        "metrics": mv.metrics,
        "lineage": mv.lineage,
        "aliases": list(mv.aliases),
    }


# --- gates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateResult:
    gate: str
    threshold: str
    value: str
    passed: bool

    def row(self) -> dict[str, str]:
        return {"gate": self.gate, "threshold": self.threshold, "value": self.value, "result": _mark(self.passed)}


def _mark(passed: bool) -> str:
    return "pass" if passed else "FAIL"


def evaluate_gates(
    gates: dict[str, float],
    metrics: dict[str, float],
    champion: dict[str, float] | None = None,
    p95_ms: float | None = None,
    where: str = "gates",
) -> list[GateResult]:
    """Thresholds (`min_<metric>`), latency (`max_latency_ms`) and no regression against the champion.

    `max_regression` applies to every metric that has a `min_` gate: the candidate may trail the
    champion by at most that much. Without a champion (first model) only thresholds apply.
    """
    results = []
    gated = []
    for name, threshold in sorted(gates.items()):
        if name.startswith("min_"):
            metric = name[4:]
            gated.append(metric)
            value = metrics.get(metric)
            results.append(
                GateResult(
                    name,
                    f">= {threshold:g}",
                    "missing" if value is None else f"{value:.4f}",
                    value is not None and value >= threshold,
                )
            )
        elif name == "max_latency_ms":
            if p95_ms is not None:
                results.append(
                    GateResult("p95 latency (ms)", f"<= {threshold:g}", f"{p95_ms:.1f}", p95_ms <= threshold)
                )
        elif name != "max_regression":
            raise PromotionError(
                f"config/environments.yaml: {where}.{name} is not a gate; expected min_<metric>, max_regression "
                "or max_latency_ms"
            )
    tolerance = gates.get("max_regression")
    if tolerance is not None and champion:
        for metric in gated:
            if metric in champion and metric in metrics:
                floor = champion[metric] - tolerance
                results.append(
                    GateResult(
                        f"{metric} vs champion",
                        f">= {floor:.4f} (champion {champion[metric]:.4f} - {tolerance:g})",
                        f"{metrics[metric]:.4f}",
                        metrics[metric] >= floor,
                    )
                )
    return results


def _gate_message(env: str, model: str, results: list[GateResult]) -> str:
    failed = [f"{r.gate} {r.value} (needs {r.threshold})" for r in results if not r.passed]
    return f"{env} gates failed for {model}: {'; '.join(failed)}"


# --- releases --------------------------------------------------------------------------------


def overlay_dir(cfg: Config, env: str) -> Path:
    return cfg.root / cfg.env(env).overlay


def overlay_file(cfg: Config, env: str, name: str = RELEASE_FILE) -> str:
    """Repository-relative path of a file in an overlay (what a PR changes)."""
    return f"{cfg.env(env).overlay}/{name}"


def project_image(cfg: Config, commit: str, image_digest: str | None = None) -> str:
    """`<image>@<digest>`: the pushed image digest when CI gives one, else the source digest at `commit`."""
    from . import source

    return source.project_image(cfg.image, cfg.root, commit, image_digest)


def _release_tags(image: str, source_digest: str, parameters: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Lineage tags that let a registered version be turned back into its release."""
    return {
        TAG_IMAGE: image,
        TAG_SOURCE_DIGEST: source_digest,
        TAG_PARAMETERS: json.dumps(parameters, sort_keys=True, separators=(",", ":")),
    }


def release_of(cfg: Config, env: str, mv, storage_uri: str | None = None, source: str | None = None) -> Release:
    """The release a registered version stands for, rebuilt from its lineage tags.

    `storage_uri` (default: where the version is stored) is committed relative when it is local;
    `source` defaults to the version itself (`<env>:<name>/<version>`).
    """
    tags = mv.tags
    where = f"{env} {mv.name} v{mv.version}"
    try:
        parameters = json.loads(tags.get(TAG_PARAMETERS, "{}"))
    except ValueError:
        raise PromotionError(f"{where}: tag {TAG_PARAMETERS} is not JSON; register the version again") from None
    image = tags.get(TAG_IMAGE)
    if not image:
        raise PromotionError(f"{where} has no {TAG_IMAGE} tag: it was not registered by a staging run; rerun staging")
    model = ModelRef(
        mv.name,
        mv.version,
        mv.digest,
        portable_uri(storage_uri or mv.source, cfg.local_root),
        source or source_of(env, mv.name, mv.version),
    )
    return Release(
        model=model,
        commit=tags.get("git_commit", NONE),
        image=image,
        source_digest=tags.get(TAG_SOURCE_DIGEST, NONE),
        pipeline=tags.get("pipeline_version", NONE),
        parameters=parameters,
        data_snapshot=tags.get("data_snapshot", NONE),
        metrics=dict(mv.metrics),
        gates=tags.get(TAG_GATES, NONE) if tags.get(TAG_GATES) in ("passed", "failed") else NONE,
    ).check(f"the release of {where}")


def committed_text(cfg: Config, env: str) -> str | None:
    """An overlay's release.yaml as committed at HEAD (None when absent)."""
    return gitops.show(cfg.root, "HEAD", overlay_file(cfg, env))


def render_committed_like(cfg: Config, env: str, release: Release) -> str:
    """release.yaml text for `release`, keeping the committed file's header comments."""
    return render_like(release, committed_text(cfg, env))


def same_code(a: Release, b: Release) -> bool:
    """The same code and pipeline run with the same parameters (the model aside)."""
    return (a.commit, a.image, a.source_digest, a.pipeline, a.parameters) == (
        b.commit,
        b.image,
        b.source_digest,
        b.pipeline,
        b.parameters,
    )


# --- sandbox ---------------------------------------------------------------------------------


@holds("sandbox")
def run_sandbox(cfg: Config, parameters: dict[str, Any] | None = None) -> FlowReport:
    """Train in the sandbox and register the model there: an experiment, never promoted.

    `parameters` override the training parameters from config (`--param NAME=VALUE`)."""
    from .artifacts import ArtifactStore

    env = cfg.env("sandbox")
    flow = Flow("sandbox", env.name, cfg.promotion)
    params = _params(cfg, env, parameters)
    commit = gitops.head_commit(cfg.root) if (cfg.root / ".git").exists() else "uncommitted"
    with flow.step("compile") as step:
        # Sandbox may run uncommitted code: the image names the last commit's source as a hint only.
        versions = compile_pipelines(cfg, project_image(cfg, commit) if commit != "uncommitted" else None)
        step.detail = versions["pipeline"][:19]
    # Sandbox runs may use uncommitted code: never reuse a previous run there.
    key = {"commit": commit, "pipeline": versions["pipeline"], "params": params, "run": time.time()}
    trained = _train(flow, cfg, env, params, key)
    with flow.step("store") as step:
        stored = ArtifactStore(env).put(trained["model_uri"])  # a local folder or the run's s3:// / gs:// output
        step.detail = stored.uri
    with flow.step("register") as step:
        registry = flow.registry(env, cfg.model_name)
        dirty = commit != "uncommitted" and bool(uncommitted(cfg, MODEL_CODE_PATHS))
        mv = registry.register(stored, _lineage(commit, versions, trained, git_dirty=str(dirty).lower()))
        step.detail = f"{mv.name} v{mv.version}"
    flow.report.model = _model_summary(mv, env.name)
    return flow.finish()


# --- staging ---------------------------------------------------------------------------------


@holds("staging")
def run_staging(
    cfg: Config,
    parameters: dict[str, Any] | None = None,
    pulls: gitops.PullRequests | None = None,
    image_digest: str | None = None,
) -> FlowReport:
    """The staging workflow: train, register, write staging's release, serve the test endpoint from
    it, smoke, gate, promotion PR.

    `parameters` override the training parameters from config (`--param NAME=VALUE`);
    `image_digest` is the image CI pushed for this commit (cluster), else the source digest stands in."""
    from .artifacts import ArtifactStore
    from .source import source_digest

    env = cfg.env("staging")
    params = _params(cfg, env, parameters)
    flow = Flow("staging", env.name, cfg.promotion)
    if env.backend != "local":
        pulls = pulls or gitops.pull_requests(cfg)  # one client: the environment branch, then the PR
    commit = committed_head(cfg, "staging")
    with flow.step("compile") as step:
        image = project_image(cfg, commit, image_digest)
        versions = compile_pipelines(cfg, image)
        step.detail = f"{versions['pipeline'][:19]} with image {image.rpartition('@')[2][:19]}"
    trained = _train(flow, cfg, env, params, {"commit": commit, "pipeline": versions["pipeline"], "params": params})
    store = ArtifactStore(env)
    with flow.step("store") as step:
        stored = store.put(trained["model_uri"])  # a local folder or the run's s3:// / gs:// output
        step.detail = stored.uri
    with flow.step("register") as step:
        registry = flow.registry(env, cfg.model_name)
        from . import runner

        # The full parameter sets the pipelines ran with (declared defaults filled in): retrain replays them.
        features = runner.bind(cfg.load_pipelines(), "features", cfg.parameters("features", env.name))
        ran = {"features": features, "training": trained["params"]}
        extra = _release_tags(image, source_digest(cfg.root, commit), ran)
        mv = registry.register(stored, _lineage(commit, versions, trained, **extra))
        step.detail = f"{mv.name} v{mv.version} ({mv.digest[:19]})"
    flow.report.model = _model_summary(mv, env.name)
    with flow.step("release") as step:
        changed = write_release(overlay_dir(cfg, env.name), release_of(cfg, env.name, registry.get(mv.version)))
        step.detail = f"{env.overlay}/{RELEASE_FILE} {'updated' if changed else 'unchanged'}"
        revision = record_environment(cfg, env, commit, pulls)
        if revision:
            step.detail += f", recorded on {ENV_BRANCH_PREFIX}{env.name} at {revision[:12]}"
    p95 = serve_and_smoke(cfg, flow, env, f"v{mv.version}", revision=revision)
    with flow.step("gates") as step:
        champion = production_champion(cfg)
        results = evaluate_gates(
            env.gates, mv.metrics, champion.metrics if champion else None, p95, "environments.staging.gates"
        )
        extra = {TAG_SMOKE_P95: f"{p95}"} if p95 is not None else {}
        # staging's release records the verdict too, whichever it is
        verdict = "passed" if all(r.passed for r in results) else "failed"
        judged = replace(release_of(cfg, env.name, registry.get(mv.version)), gates=verdict)
        write_release(overlay_dir(cfg, env.name), judged)
        record_environment(cfg, env, commit, pulls)  # the verdict too; what is served does not change
        _record_verdict(flow, step, registry, mv, results, "staging", extra)
    _mark_challenger(flow, registry, mv)
    with flow.step("pull-request") as step:
        pr, note = open_promotion(cfg, pulls, flow=flow)
        step.detail = note
        flow.report.pull_request = pr.to_dict() if pr else None
    return flow.finish()


ENV_BRANCH_PREFIX = "env/"  # staging's Argo CD Application follows env/staging (docs/decisions.md)


def record_environment(
    cfg: Config, env: Environment, commit: str, pulls: gitops.PullRequests | None = None
) -> str | None:
    """Record the environment's release in git (cluster backend): `env/<env>` becomes `commit` plus the
    overlay's release.yaml as written, pushed with the App token. Returns that commit, the revision the
    environment is synced to; None on the local backend (its endpoint serves the overlay directly)."""
    if env.backend == "local":
        return None
    path = overlay_file(cfg, env.name)
    pulls = pulls or gitops.pull_requests(cfg)
    text = (cfg.root / path).read_text()
    return pulls.record_branch(
        f"{ENV_BRANCH_PREFIX}{env.name}", commit, {path: text}, f"Record the {env.name} release for {commit[:12]}"
    )


def production_champion(cfg: Config) -> Release | None:
    """The model production's committed release serves, with its metrics: staging gates against
    git, never against production's registry (staging holds no production credentials)."""
    text = committed_text(cfg, "production")
    if text is None:
        return None
    declared = release_from_text(text, f"{overlay_file(cfg, 'production')} at HEAD")
    return None if declared.model.is_empty else declared


@holds("staging")
def open_promotion(
    cfg: Config, pulls: gitops.PullRequests | None = None, flow: Flow | None = None, again: bool = False
) -> tuple[gitops.PullRequest | None, str]:
    """Open or update the promotion PR for staging's challenger; (None, why) when there is nothing to do.

    transit: production's release becomes staging's, the model addressed in production's store.
    retrain: production's release names staging's commit, image, pipeline and parameters and no
    model yet (production trains it). Both carry staging's release, so main records what staging
    validated. A candidate whose promotion PR was already decided (merged and since rolled back,
    or closed) is not proposed again unless `again`: a rerun of staging must not undo a rollback.
    """
    from .artifacts import ArtifactStore

    own_flow = flow is None
    flow = flow or Flow("promote", "staging", cfg.promotion)
    staging, production = cfg.env("staging"), cfg.env("production")
    candidate = flow.registry(staging, cfg.model_name).alias("challenger")
    if candidate is None:
        raise PromotionError("staging has no challenger: run `make staging` to train and validate a candidate first")
    if candidate.tags.get(TAG_GATES) != "passed":
        raise PromotionError(f"staging v{candidate.version} has not passed the staging gates; rerun `make staging`")
    champion = production_champion(cfg)
    p95 = float(candidate.tags[TAG_SMOKE_P95]) if TAG_SMOKE_P95 in candidate.tags else None
    results = evaluate_gates(
        staging.gates, candidate.metrics, champion.metrics if champion else None, p95, "environments.staging.gates"
    )
    if not all(r.passed for r in results):
        # The champion may have changed since staging ran.
        report = flow.finish()
        report.gates = [r.row() for r in results]
        raise GateFailure(_gate_message("staging", f"{candidate.name} v{candidate.version}", results), report)

    staging_release = release_of(cfg, staging.name, candidate)
    files = {overlay_file(cfg, "staging"): render_committed_like(cfg, "staging", staging_release)}
    if cfg.promotion == "transit":
        in_production = ArtifactStore(production).uri_for(candidate.digest)
        production_release = replace(
            staging_release,
            model=replace(staging_release.model, storage_uri=portable_uri(in_production, cfg.local_root)),
        )
    else:
        # No model yet: production trains it. modelSource keeps the staging version that validated the code.
        production_release = replace(
            staging_release,
            model=ModelRef(candidate.name, source=staging_release.model.source),
            data_snapshot=NONE,
            metrics={},
            gates=NONE,
        )
    production_path = overlay_file(cfg, "production")
    files[production_path] = render_committed_like(cfg, "production", production_release)
    current = committed_text(cfg, "production")
    declared = release_from_text(current, f"{production_path} at HEAD") if current is not None else None
    promoted = declared is not None and (
        declared.model.digest == candidate.digest
        if cfg.promotion == "transit"
        else same_code(declared, production_release)
    )
    if promoted:
        note = f"already promoted: main's {production_path} names staging v{candidate.version}"
        if own_flow:
            flow.finish()
        return None, note

    pulls = pulls or gitops.pull_requests(cfg)
    branch = f"{PROMOTE_PREFIX}{candidate.name}-{candidate.digest[7:19]}"
    decided = [pr for pr in pulls.list() if pr.branch == branch and pr.state != "open"]
    if decided and not again and pulls.find_open(branch) is None:
        note = (
            f"not proposed again: staging v{candidate.version} was decided in PR #{decided[-1].number} "
            f"({decided[-1].state}); train a new candidate, or run `promote --again`"
        )
        if own_flow:
            flow.finish()
        return None, note
    others = [o for o in pulls.list("open") if o.branch.startswith(PROMOTE_PREFIX) and o.branch != branch]
    newer = [o for o in others if _candidate_order(cfg, staging_release.commit, o) == "newer"]
    if newer:
        # "Superseded" means newer by commit order, never "ran last": an older candidate leaves the PR alone.
        keep = newer[0]
        _restore_challenger(cfg, flow, keep)
        note = (
            f"not proposed: staging v{candidate.version} (commit {staging_release.commit[:12]}) is older than the "
            f"candidate PR #{keep.number} promotes; that PR stays open"
        )
        if own_flow:
            flow.finish()
        return None, note
    if decided and again:
        # The one override of a rollback or a rejection, recorded on the version it re-proposes.
        from .provenance import TAG_AGAIN

        flow.registry(staging, cfg.model_name).set_tags(
            candidate.version, {TAG_AGAIN: f"promote --again after PR #{decided[-1].number} ({decided[-1].state})"}
        )
        candidate = flow.registry(staging, cfg.model_name).get(candidate.version)
    title = f"Promote {candidate.name} staging v{candidate.version} to production ({cfg.promotion})"
    body = promotion_body(cfg, candidate, champion, results, files)
    if TAG_AGAIN_NOTE in candidate.tags:
        body += f"\n\n**Proposed again on purpose** (`promote --again`): {candidate.tags[TAG_AGAIN_NOTE]}."
    pr = pulls.open_or_update(branch, BASE_BRANCH, title, body, files)
    superseded = others
    for other in superseded:
        pulls.close(other.number)
    note = f"PR #{pr.number} {pr.branch}" + (
        f" (closed superseded {', '.join(f'#{o.number}' for o in superseded)})" if superseded else ""
    )
    if own_flow:
        flow.report.pull_request = pr.to_dict()
        flow.finish()
    return pr, note


TAG_AGAIN_NOTE = "promoted_again"  # = provenance.TAG_AGAIN


def _pr_release(cfg: Config, pr: gitops.PullRequest) -> Release | None:
    """Staging's release as a promotion PR carries it (None when its commit is not in this clone)."""
    text = gitops.show(cfg.root, pr.head, overlay_file(cfg, "staging")) if pr.head else None
    if text is None:
        return None
    try:
        return release_from_text(text, f"pull request #{pr.number}")
    except ReleaseError:
        return None


def _candidate_order(cfg: Config, ours: str, pr: gitops.PullRequest) -> str:
    """ "newer" when the PR's candidate was trained from a commit that descends from ours (commit order,
    `git merge-base --is-ancestor`), "same" for the same commit, else "older" (unknown counts as older)."""
    theirs = _pr_release(cfg, pr)
    if theirs is None or theirs.commit == NONE or ours == NONE:
        return "older"
    if theirs.commit == ours:
        return "same"
    return "newer" if gitops.is_ancestor(cfg.root, ours, theirs.commit) else "older"


def _restore_challenger(cfg: Config, flow: Flow, pr: gitops.PullRequest) -> None:
    """Point staging's challenger back at the version the newer open PR promotes."""
    theirs = _pr_release(cfg, pr)
    if theirs is None or theirs.model.is_empty:
        return
    registry = flow.registry(cfg.env("staging"), cfg.model_name)
    mv = registry.find_by_digest(theirs.model.digest)
    if mv is not None and "challenger" not in mv.aliases:
        registry.set_alias("challenger", mv.version)


def _metrics_table(candidate: dict[str, float], champion: dict[str, float] | None, labels: tuple[str, str]) -> str:
    rows = ["| metric | " + " | ".join(labels) + " | change |", "|---|---|---|---|"]
    for metric in sorted(candidate):
        ours = candidate[metric]
        theirs = champion.get(metric) if champion else None
        change = "" if theirs is None else f"{ours - theirs:+.4f}"
        rows.append(f"| {metric} | {ours:.4f} | {'—' if theirs is None else f'{theirs:.4f}'} | {change} |")
    return "\n".join(rows)


def _gates_table(results: list[GateResult]) -> str:
    rows = ["| gate | threshold | value | result |", "|---|---|---|---|"]
    rows += [f"| {r.gate} | {r.threshold} | {r.value} | {_mark(r.passed)} |" for r in results]
    return "\n".join(rows)


def _lineage_table(tags: dict[str, str], extra: dict[str, str]) -> str:
    keys = (
        "git_commit",
        "image",
        "source_digest",
        "pipeline_version",
        "data_snapshot",
        "digest",
        "source_env",
        "source_version",
    )
    rows = ["| lineage | value |", "|---|---|"]
    rows += [f"| {key} | `{tags[key]}` |" for key in keys if key in tags]
    rows += [f"| {key} | `{value}` |" for key, value in extra.items()]
    return "\n".join(rows)


def promotion_body(cfg: Config, candidate, champion, results: list[GateResult], files: dict[str, str]) -> str:
    """The promotion PR body: metrics against the champion, gates, lineage, and how to roll back."""
    champion_label = f"production champion v{champion.model.version}" if champion else "production champion (none yet)"
    params = {k: v for k, v in candidate.tags.items() if k.startswith(TAG_PARAM_PREFIX)}
    if cfg.promotion == "transit":
        on_merge = (
            "Merging makes production **copy** this model from the staging registry and store into its own, "
            "verify its digest, register it (tagged with its staging lineage), mark it `champion` and serve it."
        )
    else:
        on_merge = (
            "Merging makes production **retrain** with exactly this release's image, compiled pipeline (its "
            "content hash is verified) and parameters, register the result, gate it against the production "
            "champion and open the deployment PR that fills the model into production's release.yaml."
        )
    smoke = candidate.tags.get(TAG_SMOKE_P95)
    return "\n".join(
        [
            f"## Promote `{candidate.name}` staging v{candidate.version} to production",
            "",
            on_merge,
            "",
            f"### Candidate vs champion\n\n{_metrics_table(candidate.metrics, champion.metrics if champion else None, (f'staging v{candidate.version}', champion_label))}",  # noqa: E501
            "",
            f"### Gates (staging)\n\n{_gates_table(results)}",
            "",
            f"Test endpoint smoke test: passed, p95 {float(smoke):.1f} ms, predictions equal the model's offline "
            "predictions."
            if smoke
            else "",
            "",
            f"### Lineage\n\n{_lineage_table(candidate.tags, params)}",
            "",
            "### Files",
            "",
            *[f"- `{path}`" for path in sorted(files)],
            "",
            "### Roll back",
            "",
            "After this is merged and production runs it, `make rollback` opens a pull request that reverts "
            "production's `release.yaml` to the release served before; merging that and running `make production` "
            "switches serving back (the previous model is still in the production store and registry).",
        ]
    )


# --- production ------------------------------------------------------------------------------


@holds("production")
def run_production(cfg: Config, pulls: gitops.PullRequests | None = None) -> FlowReport:
    """Converge production to the release main names: (retrain) train the declared pipeline, then serve its model."""
    flow = Flow("production", "production", cfg.promotion)
    if cfg.promotion == "retrain":
        _retrain(cfg, flow, pulls)
    _serve_declared(cfg, flow)
    return flow.finish()


def _retrain(cfg: Config, flow: Flow, pulls: gitops.PullRequests | None) -> None:
    """retrain: train exactly the release's pipeline, image and parameters in production, gate, deployment PR."""
    from .artifacts import ArtifactStore
    from .provenance import verify_committed
    from .source import source_digest

    env = cfg.env("production")
    where = overlay_file(cfg, "production")
    declared = verify_committed(cfg, "production")  # refuses an unverifiable release before anything runs
    if not declared.has_pipeline:
        flow.report.notes.append(f"{where} names no pipeline yet: nothing promoted to production")
        return
    if not declared.model.is_empty:
        # The deployment PR was merged (or a rollback restored an earlier release): serve it as it is.
        for name in ("features", "training", "store", "register-trained"):
            flow.skip(name, f"{where} names production v{declared.model.version} already")
        flow.skip("pull-request", f"{where} names production v{declared.model.version} already")
        return
    commit = committed_head(cfg, "production")
    with flow.step("verify-pipeline") as step:
        if env.backend == "local":
            # Locally the checkout's code runs, not the image: it must be the code staging validated.
            here = source_digest(cfg.root, commit)
            if here != declared.source_digest:
                raise PromotionError(
                    f"{where} names source {declared.source_digest[:19]} but main's source is {here[:19]}: the "
                    "code changed after staging validated it; let staging run on main and promote again"
                )
        versions = compile_pipelines(cfg, declared.image)
        if versions["pipeline"] != declared.pipeline:
            raise PromotionError(
                f"{where} names pipeline {declared.pipeline[:19]} but main compiles to "
                f"{versions['pipeline'][:19]} with image {declared.image}: the pipeline code changed after "
                "staging validated it; let staging run on main and promote again"
            )
        step.detail = f"compiled pipeline {versions['pipeline'][:19]} = the one staging validated"
    # Exactly the parameters staging validated, every one of them (config cannot change them here).
    params = _params(cfg, env, promoted=declared.parameters.get("training", {}), where=where)
    feature_params = declared.parameters.get("features", {})
    parameters = {"features": feature_params, "training": params}
    tags = _release_tags(declared.image, declared.source_digest, parameters)
    registry = flow.registry(env, cfg.model_name)
    trained_here = [
        mv
        for mv in registry.versions()
        if mv.tags.get("pipeline_version") == declared.pipeline
        and params_from_tags(mv.tags) == params
        and all(mv.tags.get(key) == value for key, value in tags.items())
    ]
    if trained_here:
        mv = trained_here[-1]
        for name in ("features", "training", "store", "register-trained"):
            flow.skip(name, f"production v{mv.version} was trained with this release already")
    else:
        key = {"commit": commit, "pipeline": versions["pipeline"], "image": declared.image, "params": params}
        trained = _train(flow, cfg, env, params, key, feature_params=feature_params)
        with flow.step("store") as step:
            stored = ArtifactStore(env).put(trained["model_uri"])  # a local folder or the run's s3:// / gs:// output
            step.detail = stored.uri
        with flow.step("register-trained") as step:
            validated = declared.model.source if declared.model.source != NONE else "staging"
            extra = {**tags, TAG_VALIDATED_BY: validated}
            mv = registry.register(stored, _lineage(declared.commit, versions, trained, **extra))
            step.detail = f"{mv.name} v{mv.version} ({mv.digest[:19]})"
    flow.report.model = _model_summary(mv, env.name)

    pulls = pulls or gitops.pull_requests(cfg)
    branch = f"{DEPLOY_PREFIX}{mv.name}-{mv.digest[7:19]}"
    proposed = [pr for pr in pulls.list() if pr.branch == branch]
    if any(pr.state != "open" for pr in proposed) and not any(pr.state == "open" for pr in proposed):
        # Merged earlier and since rolled back, or closed by a reviewer: do not propose it again.
        flow.skip("pull-request", f"the deployment of v{mv.version} was already decided in PR #{proposed[-1].number}")
        return
    with flow.step("gates") as step:
        champion = registry.alias("champion")
        results = evaluate_gates(
            {k: v for k, v in env.gates.items() if k != "max_latency_ms"},
            mv.metrics,
            champion.metrics if champion and champion.digest != mv.digest else None,
            where="environments.production.gates",
        )
        _record_verdict(flow, step, registry, mv, results, "production")
    _mark_challenger(flow, registry, mv)
    with flow.step("pull-request") as step:
        model = ModelRef(
            mv.name,
            mv.version,
            mv.digest,
            portable_uri(mv.source, cfg.local_root),
            source_of(env.name, mv.name, mv.version),
        )
        deployed = replace(
            declared.with_model(model, metrics=dict(mv.metrics), gates="passed"),
            data_snapshot=mv.tags.get("data_snapshot", NONE),
        )
        title = f"Deploy {mv.name} production v{mv.version} (retrained with pipeline {declared.pipeline[7:19]})"
        body = deployment_body(mv, champion, results, declared)
        pr = pulls.open_or_update(
            branch, BASE_BRANCH, title, body, {where: render_committed_like(cfg, "production", deployed)}
        )
        flow.report.pull_request = pr.to_dict()
        step.detail = f"PR #{pr.number} {pr.branch}"
    if env.auto_merge:
        from . import provenance

        with flow.step("merge") as step:
            pr = provenance.merge(cfg, pr.number, pulls)
            flow.report.pull_request = pr.to_dict()
            step.detail = f"auto_merge: PR #{pr.number} merged"
    else:
        flow.report.notes.append(f"review and merge PR #{pr.number}, then run `make production` to serve v{mv.version}")


def deployment_body(mv, champion, results: list[GateResult], declared: Release) -> str:
    champion_label = f"champion v{champion.version}" if champion else "champion (none yet)"
    return "\n".join(
        [
            f"## Deploy `{mv.name}` production v{mv.version}",
            "",
            f"Production retrained with pipeline `{declared.pipeline}` and image `{declared.image}` (the release "
            f"`{declared.model.source}` validated in staging) and registered the result. This fills the model into "
            "production's release; merging it makes production serve it (`make production`).",
            "",
            f"### Retrained model vs champion\n\n{_metrics_table(mv.metrics, champion.metrics if champion else None, (f'v{mv.version}', champion_label))}",  # noqa: E501
            "",
            f"### Gates (production)\n\n{_gates_table(results)}",
            "",
            f"### Lineage\n\n{_lineage_table(mv.tags, {'validated in staging': declared.model.source})}",
            "",
            "### Roll back",
            "",
            f"`make rollback` opens a pull request reverting `{RELEASE_FILE}` to the release served before.",
        ]
    )


def ref_or_none(cfg: Config, env: str) -> ModelRef | None:
    """The model an overlay's release (working tree) names, None before any."""
    ref = read_release(overlay_dir(cfg, env)).model
    return None if ref.is_empty else ref


def _serve_declared(cfg: Config, flow: Flow) -> None:
    """Make production serve exactly what its committed release names: copy if needed, verify, register,
    champion, serve."""
    from . import provenance
    from .artifacts import ArtifactStore, StoredModel
    from .registry import lineage_tags

    env = cfg.env("production")
    # Committed on main, gates passed, traced to its promotion, registry version and digest agreeing:
    # anything else stops here, before a copy, a registration or a switch of the endpoint.
    declared = provenance.verify_committed(cfg, "production")
    ref = declared.model
    if ref.is_empty:
        where = f"{env.overlay}/{RELEASE_FILE}"
        still = provenance.served_elsewhere(cfg, declared, where)
        if still is None:
            flow.report.notes.append(f"{where} declares no model yet (modelVersion: none): nothing to serve")
        elif cfg.promotion == "retrain" and declared.has_pipeline:
            # Retrain: the promoted pipeline's model waits for its deployment PR; say what serves meanwhile.
            flow.report.notes.append(f"{still}, until the deployment PR naming the retrained model is merged")
        else:
            # A release never withdraws a served model silently: the endpoint would be labelled otherwise.
            raise provenance.ProvenanceError(
                f"{still}; a release does not withdraw a served model: roll back to a model (`make rollback`) "
                "or stop the endpoint on purpose (`mlrail stop --env production`)"
            )
        return
    where = f"{overlay_file(cfg, 'production')}: data.modelSource"
    try:
        source_env, source_name, source_version = parse_source(ref.source, where)
    except ReleaseError as exc:
        raise PromotionError(str(exc)) from None
    uri = resolve_uri(ref.storage_uri, cfg.local_root)
    store = ArtifactStore(env)
    with flow.step("copy") as step:
        if store.has(ref.digest):
            step.status, step.detail = "skipped", "already in the production store"
        elif source_env == env.name:
            raise PromotionError(
                f"production's release names {ref.storage_uri}, which is missing from the production store: "
                f"revert {RELEASE_FILE} (`make rollback`) or retrain"
            )
        else:
            source_store = ArtifactStore(cfg.env(source_env))
            stored = store.copy_from(source_store, source_store.uri_for(ref.digest), ref.digest)
            step.detail = f"{source_env} -> {stored.uri}"
        store.verify(uri, ref.digest)  # the URI the release names, not just the digest
    with flow.step("register") as step:
        registry = flow.registry(env, cfg.model_name)
        mv = registry.find_by_digest(ref.digest)
        if mv is not None:
            step.status, step.detail = "skipped", f"already registered: v{mv.version}"
        elif source_env == env.name:
            raise PromotionError(f"production registry has no version with digest {ref.digest}: retrain or roll back")
        else:
            source = flow.registry(cfg.env(source_env), source_name).get(source_version)
            if source.digest != ref.digest:
                raise PromotionError(
                    f"the release names {ref.source} with digest {ref.digest}, but that version has {source.digest}"
                )
            lineage = {k: v for k, v in source.tags.items() if k not in ("storage_uri", TAG_GATES, TAG_SMOKE_P95)}
            lineage.update(
                lineage_tags(
                    source_env=source_env,
                    source_registry=cfg.env(source_env).registry_uri,
                    source_version=source_version,
                )
            )
            mv = registry.register(StoredModel(uri, ref.digest), lineage)
            step.detail = f"{mv.name} v{mv.version} (copied from {ref.source})"
    flow.report.model = _model_summary(mv, env.name)
    with flow.step("champion") as step:
        if "champion" not in mv.aliases:
            registry.set_alias("champion", mv.version)
        if "challenger" in mv.aliases:  # it no longer challenges: it serves
            registry.delete_alias("challenger")
        step.detail = f"champion -> v{mv.version}"
    serve_and_smoke(cfg, flow, env, f"{mv.name} v{mv.version}")
    flow.report.model = _model_summary(registry.get(mv.version), env.name)


def serve_and_smoke(cfg: Config, flow: Flow, env: Environment, model: str, revision: str | None = None) -> float | None:
    """Switch the environment's endpoint to its release and smoke-test it; returns the p95 latency.

    Local backend: the MLServer endpoint (blue/green, verified digest). Cluster backend: staging syncs
    to `revision` (the commit recording its release, Argo CD or kubectl) and smoke-tests the URL the
    synced InferenceService reports; production's workflow syncs and smoke-tests in its next steps
    (`make sync`, `make smoke`), so this flow only records that.
    """
    from . import serving

    if env.backend != "local":
        if env.name == "production":
            flow.skip("deploy", "the workflow syncs production next (`make sync ENV=production`)")
            flow.skip("smoke", "the workflow smoke-tests production next (`make smoke ENV=production`)")
            return None
        from .cluster import sync

        with flow.step("deploy", "serving") as step:
            result = sync.sync(cfg, env, revision=revision)
            step.detail = f"{result.method}: {result.target} {result.detail}"
            flow.report.endpoint = {"url": result.url or env.cluster.endpoint_url, "sync": asdict(result)}
        with flow.step("smoke") as step:
            smoke = serving.smoke(cfg, env.name, url=result.url or None)
            flow.report.smoke = smoke.to_dict()
            step.detail = f"{smoke.url}: p95 {smoke.p95_ms:.1f} ms, predictions match: {smoke.predictions_match}"
            if not smoke.passed:
                raise PromotionError(f"{env.name} smoke test failed for {model}: {'; '.join(smoke.failures)}")
        return smoke.p95_ms
    with flow.step("deploy", "serving") as step:
        status = serving.deploy_from_overlay(cfg, env.name)
        flow.report.endpoint = status.to_dict()
        step.detail = f"{status.url} serves {status.model_name} v{status.version}"
    with flow.step("smoke") as step:
        smoke = serving.smoke(cfg, env.name)
        flow.report.smoke = smoke.to_dict()
        step.detail = f"p95 {smoke.p95_ms:.1f} ms, predictions match: {smoke.predictions_match}"
        if not smoke.passed:
            advice = "; consider `make rollback`" if env.name == "production" else ""
            raise PromotionError(f"{env.name} smoke test failed for {model}: {'; '.join(smoke.failures)}{advice}")
    return smoke.p95_ms


# --- rollback --------------------------------------------------------------------------------


@holds("production")
def open_rollback(cfg: Config, pulls: gitops.PullRequests | None = None) -> tuple[gitops.PullRequest, Release]:
    """Open a PR reverting production's release.yaml to the release it named before the current model."""
    from .artifacts import ArtifactStore

    path = overlay_file(cfg, "production")
    committed = gitops.show(cfg.root, "HEAD", path)
    if committed is None:
        raise PromotionError(f"{path} is not committed on main; nothing to roll back")
    current = release_from_text(committed, f"{path} at HEAD")
    target_text, target, commit = None, None, None
    for commit, text in gitops.file_history(cfg.root, path):
        if text is None:
            continue
        try:
            release = release_from_text(text, f"{path} at {commit[:12]}")
        except ReleaseError:
            continue  # an older file format or a broken revision: never a rollback target
        if not release.model.is_empty and release.model.digest != current.model.digest:
            target_text, target = text, release
            break
    if target is None or target_text is None:
        raise PromotionError(
            f"nothing to roll back to: {path} has named no model other than the current one on main "
            "(a rollback needs an earlier promoted model)"
        )
    # The revert must name a model production can serve right away.
    stored_at = resolve_uri(target.model.storage_uri, cfg.local_root)
    ArtifactStore(cfg.env("production")).verify(stored_at, target.model.digest)
    pulls = pulls or gitops.pull_requests(cfg)
    model, now = target.model, current.model
    branch = f"{ROLLBACK_PREFIX}{model.name}-{model.digest[7:19]}"
    what = "no model" if now.is_empty else f"v{now.version} ({now.digest[:19]})"
    title = f"Roll back {model.name} in production to v{model.version} ({model.digest[7:19]})"
    body = "\n".join(
        [
            f"## Roll back `{model.name}` in production to v{model.version}",
            "",
            f"Reverts `{path}` to its content at {commit[:12]}: production serves {what} now and will serve "
            f"v{model.version} (`{model.digest}`, source `{model.source}`) again, with the image and pipeline it "
            "was released with. That model is still in the production store; merging this and running "
            "`make production` switches serving back.",
            "",
            "| | current | after the rollback |",
            "|---|---|---|",
            f"| model version | {now.version} | {model.version} |",
            f"| model digest | `{now.digest}` | `{model.digest}` |",
            f"| model source | `{now.source}` | `{model.source}` |",
            f"| image | `{current.image}` | `{target.image}` |",
            f"| pipeline | `{current.pipeline}` | `{target.pipeline}` |",
            f"| commit | `{current.commit}` | `{target.commit}` |",
        ]
    )
    return pulls.open_or_update(branch, BASE_BRANCH, title, body, {path: target_text}), target


# --- status ----------------------------------------------------------------------------------


def environment_status(cfg: Config) -> list[dict[str, Any]]:
    """Per environment: registry versions and aliases, the overlay's release, the endpoint."""
    from . import serving
    from .registry import Registry

    endpoints = serving.endpoints(cfg)
    rows = []
    for name, env in cfg.environments.items():
        versions = []
        # A local registry that was never used stays absent: status creates nothing.
        if env.backend != "local" or (env.local_dir / "registry.db").exists():
            registry = Registry(env, cfg.model_name)
            versions = registry.versions() if registry.exists() else []
        aliases = {alias: mv.version for mv in versions for alias in mv.aliases}
        try:
            ref = read_release(overlay_dir(cfg, name)).model
            declared = "none" if ref.is_empty else f"v{ref.version} {ref.digest[:19]} ({ref.source})"
        except ReleaseError as exc:
            declared = f"invalid: {exc}"
        endpoint = endpoints.get(name)
        if not env.serving:
            serves = "not served"
        elif endpoint is None:
            serves = "stopped"
        else:
            serves = f"{endpoint.url} v{endpoint.version} {endpoint.digest[:19]}"
        rows.append(
            {
                "env": name,
                "versions": len(versions),
                "champion": aliases.get("champion", ""),
                "challenger": aliases.get("challenger", ""),
                "release": declared,
                "endpoint": serves,
                "registry": [mv.to_dict() for mv in versions],
            }
        )
    return rows
