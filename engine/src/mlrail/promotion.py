"""The life of a model: the sandbox, staging and production flows, gates, promotion PRs, rollback.

- sandbox: features + training, stored and registered in the sandbox (experiments).
- staging (on merge to main): compile, features + training, store, register with lineage, write
  the staging overlay's model.yaml, serve the test endpoint from it, smoke-test it, evaluate the
  gates, mark the version `challenger`, open or update the promotion PR.
- promotion PR: `transit` changes production's model.yaml (the validated model, addressed in
  production's store); `retrain` changes production's pipeline.yaml (the compiled pipeline
  version and parameters that passed staging). Both also carry staging's model.yaml, so main
  records what staging validated.
- production (on merge, a reconcile): `retrain` first trains the declared pipeline in production
  (verifying its content hash), registers, gates against the champion and opens the deployment
  PR changing model.yaml (merged at once when `auto_merge`). Then, for both patterns, the model
  model.yaml names is copied in if missing (transit), verified, registered with lineage, made
  `champion` and served. Serving never switches to a model that is missing or whose digest differs.
- rollback: a PR reverting production's model.yaml to the model it served before.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import gitops
from .config import Config, Environment
from .errors import MlopsError
from .fsutil import atomic_write_text
from .modelref import ModelRef, ModelRefError, read_model_ref, render_model_ref

FAULT_VAR = "MLOPS_FAULT"
PIPELINE_FILE = "pipeline.yaml"
MODEL_FILE = "model.yaml"
BASE_BRANCH = "main"
PROMOTE_PREFIX = "promote/"
DEPLOY_PREFIX = "deploy/"
ROLLBACK_PREFIX = "rollback/"
TAG_GATES = "gates"  # passed | failed, set on the version the gates judged
TAG_SMOKE_P95 = "smoke.p95_ms"
TAG_PARAM_PREFIX = "param."
TAG_VALIDATED_BY = "validated_by"  # retrain: the staging version that validated the pipeline
# Code that decides what a model is: staging and production train committed code only.
MODEL_CODE_PATHS = ("src", "pyproject.toml")
STAGING_FLOW_STEPS = (
    "compile",
    "features",
    "training",
    "store",
    "register",
    "model-ref",
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


def compile_pipelines(cfg: Config) -> dict[str, str]:
    """Compile every pipeline into build/pipelines; returns each one's content hash and their combined version."""
    from .compile import compile_all, pipeline_version

    compiled = compile_all(cfg.load_pipelines(), cfg.root / "build" / "pipelines")
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


def _train(flow: Flow, cfg: Config, env: Environment, params: dict[str, float], key: dict[str, Any]) -> dict[str, Any]:
    """Features then training, skipped when a finished run for the same key still exists."""
    from . import runner

    progress = Progress(env, flow.name, key)
    done = progress.get("training")
    if done and Path(done["model_uri"]).is_dir():
        flow.skip("features", f"finished earlier: {done['snapshot'][:19]}")
        flow.skip("training", f"finished earlier: {done['model_uri']}")
        return done
    with flow.step("features", "training") as step:
        pipelines = cfg.load_pipelines()
        features = runner.run_features(env, pipelines)
        step.detail = f"{features.rows} rows, snapshot {features.snapshot[:19]}"
    with flow.step("training", "training") as step:
        trained = runner.run_training(env, pipelines, features.features_uri, **params)
        step.detail = ", ".join(f"{k} {v:.3f}" for k, v in trained.metrics.items() if k != "test_rows")
        done = {
            "model_uri": trained.model_uri,
            "metrics": trained.metrics,
            "snapshot": trained.snapshot,
            "params": trained.params,
        }
        progress.save("training", done)
    return done


def _params(c: float | None, max_iter: int | None = None, seed: int | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"c": 1.0 if c is None else float(c)}
    if max_iter is not None:
        params["max_iter"] = int(max_iter)
    if seed is not None:
        params["seed"] = int(seed)
    if params["c"] <= 0:
        raise PromotionError(f"--c is {params['c']}; expected a positive regularisation strength")
    return params


def _lineage(commit: str, versions: dict[str, str], trained: dict[str, Any], **extra: str) -> dict[str, str]:
    from .registry import lineage_tags

    params = {f"{TAG_PARAM_PREFIX}{k}": str(v) for k, v in trained["params"].items()}
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


# --- model references ------------------------------------------------------------------------


def overlay_dir(cfg: Config, env: str) -> Path:
    return cfg.root / cfg.env(env).overlay


def overlay_file(cfg: Config, env: str, name: str = MODEL_FILE) -> str:
    """Repository-relative path of a file in an overlay (what a PR changes)."""
    return f"{cfg.env(env).overlay}/{name}"


def source_of(env: str, name: str, version: str) -> str:
    """The `source` field of model.yaml: the registry version that produced or validated the model."""
    return f"{env}:{name}/{version}"


def parse_source(source: str) -> tuple[str, str, str]:
    """(env, name, version) of a `source` field written by source_of."""
    env, _, rest = source.partition(":")
    name, _, version = rest.rpartition("/")
    if not env or not name or not version.isdigit():
        raise PromotionError(f"model.yaml source {source!r} is not of the form <env>:<model name>/<version>")
    return env, name, version


def ref_from_text(text: str, where: str) -> ModelRef:
    """Parse the content of a model.yaml (from git history, not the working tree) and check it."""
    try:
        data = (yaml.safe_load(text) or {}).get("data") or {}
    except (yaml.YAMLError, AttributeError):
        raise ModelRefError(f"{where} is not a model reference ConfigMap") from None
    keys = {"name": "name", "version": "version", "digest": "digest", "storageUri": "storage_uri", "source": "source"}
    try:
        return ModelRef(**{attr: str(data[key]) for key, attr in keys.items()}).check(where)
    except KeyError as exc:
        raise ModelRefError(f"{where}: data.{exc.args[0]} is missing") from None


def _header_of(text: str | None) -> str | None:
    if text is None:
        return None
    lines = []
    for line in text.splitlines(keepends=True):
        if not (line.startswith("#") or not line.strip()):
            break
        lines.append(line)
    return "".join(lines) or None


def render_ref_like(cfg: Config, env: str, ref: ModelRef) -> str:
    """model.yaml text for `ref`, keeping the committed file's header comments."""
    committed = gitops.show(cfg.root, "HEAD", overlay_file(cfg, env))
    header = _header_of(committed)
    return render_model_ref(ref, header) if header else render_model_ref(ref)


def render_pipeline_spec(spec: dict[str, Any]) -> str:
    header = (
        "# The compiled pipelines production runs (retrain pattern). A promotion PR sets this to what\n"
        "# passed staging; on merge, production verifies the content hash, trains with exactly these\n"
        "# pipelines and parameters, and opens the deployment PR for the model it trained.\n"
    )
    return header + yaml.safe_dump(spec, sort_keys=False)


def read_pipeline_spec(text: str | None, where: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        spec = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PromotionError(f"{where} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(spec, dict) or not str(spec.get("pipeline_version", "")).startswith("sha256:"):
        raise PromotionError(f"{where}: pipeline_version is missing; expected sha256:<hex> of the compiled pipelines")
    if not isinstance(spec.get("parameters", {}), dict):
        raise PromotionError(f"{where}: parameters must be a mapping of name to value")
    return spec


# --- sandbox ---------------------------------------------------------------------------------


def run_sandbox(cfg: Config, c: float | None = None) -> FlowReport:
    """Train in the sandbox and register the model there: an experiment, never promoted."""
    from .artifacts import ArtifactStore

    env = cfg.env("sandbox")
    flow = Flow("sandbox", env.name, cfg.promotion)
    params = _params(c)
    commit = gitops.head_commit(cfg.root) if (cfg.root / ".git").exists() else "uncommitted"
    with flow.step("compile") as step:
        versions = compile_pipelines(cfg)
        step.detail = versions["pipeline"][:19]
    # Sandbox runs may use uncommitted code: never reuse a previous run there.
    key = {"commit": commit, "pipeline": versions["pipeline"], "params": params, "run": time.time()}
    trained = _train(flow, cfg, env, params, key)
    with flow.step("store") as step:
        stored = ArtifactStore(env).put(Path(trained["model_uri"]))
        step.detail = stored.uri
    with flow.step("register") as step:
        registry = flow.registry(env, cfg.model_name)
        dirty = commit != "uncommitted" and bool(uncommitted(cfg, MODEL_CODE_PATHS))
        mv = registry.register(stored, _lineage(commit, versions, trained, git_dirty=str(dirty).lower()))
        step.detail = f"{mv.name} v{mv.version}"
    flow.report.model = _model_summary(mv, env.name)
    return flow.finish()


# --- staging ---------------------------------------------------------------------------------


def run_staging(cfg: Config, c: float | None = None, pulls: gitops.PullRequests | None = None) -> FlowReport:
    """The staging workflow: train, register, serve the test endpoint, smoke, gate, promotion PR."""
    from .artifacts import ArtifactStore
    from .modelref import write_model_ref

    env = cfg.env("staging")
    params = _params(c)
    flow = Flow("staging", env.name, cfg.promotion)
    commit = committed_head(cfg, "staging")
    with flow.step("compile") as step:
        versions = compile_pipelines(cfg)
        step.detail = versions["pipeline"][:19]
    trained = _train(flow, cfg, env, params, {"commit": commit, "pipeline": versions["pipeline"], "params": params})
    store = ArtifactStore(env)
    with flow.step("store") as step:
        stored = store.put(Path(trained["model_uri"]))
        step.detail = stored.uri
    with flow.step("register") as step:
        registry = flow.registry(env, cfg.model_name)
        mv = registry.register(stored, _lineage(commit, versions, trained))
        step.detail = f"{mv.name} v{mv.version} ({mv.digest[:19]})"
    flow.report.model = _model_summary(mv, env.name)
    ref = ModelRef(cfg.model_name, mv.version, stored.digest, stored.uri, source_of(env.name, mv.name, mv.version))
    with flow.step("model-ref") as step:
        changed = write_model_ref(overlay_dir(cfg, env.name), ref)
        step.detail = f"{env.overlay}/{MODEL_FILE} {'updated' if changed else 'unchanged'}"
    p95 = serve_and_smoke(cfg, flow, env, f"v{mv.version}")
    with flow.step("gates") as step:
        champion = flow.registry(cfg.env("production"), cfg.model_name).alias("champion")
        results = evaluate_gates(
            env.gates, mv.metrics, champion.metrics if champion else None, p95, "environments.staging.gates"
        )
        extra = {TAG_SMOKE_P95: f"{p95}"} if p95 is not None else {}
        _record_verdict(flow, step, registry, mv, results, "staging", extra)
    _mark_challenger(flow, registry, mv)
    with flow.step("pull-request") as step:
        pr, note = open_promotion(cfg, pulls, flow=flow)
        step.detail = note
        flow.report.pull_request = pr.to_dict() if pr else None
    return flow.finish()


def open_promotion(
    cfg: Config, pulls: gitops.PullRequests | None = None, flow: Flow | None = None, again: bool = False
) -> tuple[gitops.PullRequest | None, str]:
    """Open or update the promotion PR for staging's challenger; (None, why) when there is nothing to do.

    A candidate whose promotion PR was already decided (merged and since rolled back, or closed)
    is not proposed again unless `again`: a rerun of staging must not undo a rollback.
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
    champion = flow.registry(production, cfg.model_name).alias("champion")
    p95 = float(candidate.tags[TAG_SMOKE_P95]) if TAG_SMOKE_P95 in candidate.tags else None
    results = evaluate_gates(
        staging.gates, candidate.metrics, champion.metrics if champion else None, p95, "environments.staging.gates"
    )
    if not all(r.passed for r in results):
        # The champion may have changed since staging ran.
        report = flow.finish()
        report.gates = [r.row() for r in results]
        raise GateFailure(_gate_message("staging", f"{candidate.name} v{candidate.version}", results), report)

    staging_ref = ModelRef(
        candidate.name,
        candidate.version,
        candidate.digest,
        candidate.source,
        source_of(staging.name, candidate.name, candidate.version),
    )
    files = {overlay_file(cfg, "staging"): render_ref_like(cfg, "staging", staging_ref)}
    if cfg.promotion == "transit":
        production_ref = ModelRef(
            candidate.name,
            candidate.version,
            candidate.digest,
            ArtifactStore(production).uri_for(candidate.digest),
            staging_ref.source,
        )
        production_path = overlay_file(cfg, "production")
        files[production_path] = render_ref_like(cfg, "production", production_ref)
    else:
        production_path = overlay_file(cfg, "production", PIPELINE_FILE)
        files[production_path] = render_pipeline_spec(pipeline_spec(candidate))
    if gitops.show(cfg.root, "HEAD", production_path) == files[production_path]:
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
    title = f"Promote {candidate.name} staging v{candidate.version} to production ({cfg.promotion})"
    body = promotion_body(cfg, candidate, champion, results, files)
    pr = pulls.open_or_update(branch, BASE_BRANCH, title, body, files)
    superseded = [
        other for other in pulls.list("open") if other.branch.startswith(PROMOTE_PREFIX) and other.branch != branch
    ]
    for other in superseded:
        pulls.close(other.number)
    note = f"PR #{pr.number} {pr.branch}" + (
        f" (closed superseded {', '.join(f'#{o.number}' for o in superseded)})" if superseded else ""
    )
    if own_flow:
        flow.report.pull_request = pr.to_dict()
        flow.finish()
    return pr, note


def pipeline_spec(candidate) -> dict[str, Any]:
    """retrain: what production must run, taken from the lineage of the staging candidate."""
    params = {}
    for key, value in sorted(candidate.tags.items()):
        if key.startswith(TAG_PARAM_PREFIX):
            number = float(value)
            params[key[len(TAG_PARAM_PREFIX) :]] = int(number) if number.is_integer() and key != "param.c" else number
    return {
        "pipeline_version": candidate.tags["pipeline_version"],
        "parameters": params,
        "git_commit": candidate.tags.get("git_commit", ""),
        "validated": {
            "env": "staging",
            "model": candidate.name,
            "version": candidate.version,
            "digest": candidate.digest,
            "data_snapshot": candidate.tags.get("data_snapshot", ""),
        },
    }


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
    keys = ("git_commit", "pipeline_version", "data_snapshot", "digest", "source_env", "source_version")
    rows = ["| lineage | value |", "|---|---|"]
    rows += [f"| {key} | `{tags[key]}` |" for key in keys if key in tags]
    rows += [f"| {key} | `{value}` |" for key, value in extra.items()]
    return "\n".join(rows)


def promotion_body(cfg: Config, candidate, champion, results: list[GateResult], files: dict[str, str]) -> str:
    """The promotion PR body: metrics against the champion, gates, lineage, and how to roll back."""
    champion_label = f"production champion v{champion.version}" if champion else "production champion (none yet)"
    params = {k: v for k, v in candidate.tags.items() if k.startswith(TAG_PARAM_PREFIX)}
    if cfg.promotion == "transit":
        on_merge = (
            "Merging makes production **copy** this model from the staging registry and store into its own, "
            "verify its digest, register it (tagged with its staging lineage), mark it `champion` and serve it."
        )
    else:
        on_merge = (
            "Merging makes production **retrain** with exactly this compiled pipeline (its content hash is "
            "verified), register the result, gate it against the production champion and open the deployment "
            "PR that changes production's model.yaml."
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
            "production's `model.yaml` to the model served before; merging that and running `make production` "
            "switches serving back (the previous model is still in the production store and registry).",
        ]
    )


# --- production ------------------------------------------------------------------------------


def run_production(cfg: Config, pulls: gitops.PullRequests | None = None) -> FlowReport:
    """Converge production to what main declares: (retrain) train the declared pipeline, then serve model.yaml."""
    flow = Flow("production", "production", cfg.promotion)
    if cfg.promotion == "retrain":
        _retrain(cfg, flow, pulls)
    _serve_declared(cfg, flow)
    return flow.finish()


def _retrain(cfg: Config, flow: Flow, pulls: gitops.PullRequests | None) -> None:
    from .artifacts import ArtifactStore

    env = cfg.env("production")
    where = overlay_file(cfg, "production", PIPELINE_FILE)
    spec = read_pipeline_spec(_read(cfg.root / where), where)
    if spec is None:
        flow.report.notes.append(f"{where} is absent: no pipeline promoted to production yet")
        return
    commit = committed_head(cfg, "production")
    with flow.step("verify-pipeline") as step:
        versions = compile_pipelines(cfg)
        if versions["pipeline"] != spec["pipeline_version"]:
            raise PromotionError(
                f"{where} names pipeline {spec['pipeline_version'][:19]} but main compiles to "
                f"{versions['pipeline'][:19]}: the pipeline code changed after staging validated it; "
                "let staging run on main and promote again"
            )
        step.detail = f"compiled pipeline {versions['pipeline'][:19]} = the one staging validated"
    params = _params(**{k: v for k, v in spec.get("parameters", {}).items() if k in ("c", "max_iter", "seed")})
    registry = flow.registry(env, cfg.model_name)
    trained_here = [
        mv
        for mv in registry.versions()
        if mv.tags.get("pipeline_version") == spec["pipeline_version"]
        and all(mv.tags.get(f"{TAG_PARAM_PREFIX}{k}") == str(v) for k, v in params.items())
    ]
    if trained_here:
        mv = trained_here[-1]
        for name in ("features", "training", "store", "register-trained"):
            flow.skip(name, f"production v{mv.version} was trained with this pipeline already")
    else:
        key = {"commit": commit, "pipeline": versions["pipeline"], "params": params}
        trained = _train(flow, cfg, env, params, key)
        with flow.step("store") as step:
            stored = ArtifactStore(env).put(Path(trained["model_uri"]))
            step.detail = stored.uri
        validated = spec.get("validated", {})
        with flow.step("register-trained") as step:
            extra = {TAG_VALIDATED_BY: f"staging:{validated.get('model', cfg.model_name)}/{validated.get('version')}"}
            mv = registry.register(stored, _lineage(commit, versions, trained, **extra))
            step.detail = f"{mv.name} v{mv.version} ({mv.digest[:19]})"
    flow.report.model = _model_summary(mv, env.name)

    pulls = pulls or gitops.pull_requests(cfg)
    branch = f"{DEPLOY_PREFIX}{mv.name}-{mv.digest[7:19]}"
    declared = ref_or_none(cfg, "production")
    proposed = [pr for pr in pulls.list() if pr.branch == branch]
    if declared is not None and declared.digest == mv.digest:
        flow.skip("pull-request", f"model.yaml already names production v{mv.version}")
        return
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
        ref = ModelRef(mv.name, mv.version, mv.digest, mv.source, source_of(env.name, mv.name, mv.version))
        path = overlay_file(cfg, "production")
        title = f"Deploy {mv.name} production v{mv.version} (retrained with pipeline {spec['pipeline_version'][7:19]})"
        body = deployment_body(mv, champion, results, spec)
        pr = pulls.open_or_update(branch, BASE_BRANCH, title, body, {path: render_ref_like(cfg, "production", ref)})
        flow.report.pull_request = pr.to_dict()
        step.detail = f"PR #{pr.number} {pr.branch}"
    if env.auto_merge:
        with flow.step("merge") as step:
            pr = pulls.merge(pr.number)
            flow.report.pull_request = pr.to_dict()
            step.detail = f"auto_merge: PR #{pr.number} merged"
    else:
        flow.report.notes.append(f"review and merge PR #{pr.number}, then run `make production` to serve v{mv.version}")


def deployment_body(mv, champion, results: list[GateResult], spec: dict[str, Any]) -> str:
    validated = spec.get("validated", {})
    champion_label = f"champion v{champion.version}" if champion else "champion (none yet)"
    return "\n".join(
        [
            f"## Deploy `{mv.name}` production v{mv.version}",
            "",
            f"Production retrained with pipeline `{spec['pipeline_version']}` (the one staging v"
            f"{validated.get('version', '?')} validated) and registered the result. Merging this makes production "
            "serve it (`make production`).",
            "",
            f"### Retrained model vs champion\n\n{_metrics_table(mv.metrics, champion.metrics if champion else None, (f'v{mv.version}', champion_label))}",  # noqa: E501
            "",
            f"### Gates (production)\n\n{_gates_table(results)}",
            "",
            f"### Lineage\n\n{_lineage_table(mv.tags, {'validated in staging': validated.get('digest', '')})}",
            "",
            "### Roll back",
            "",
            "`make rollback` opens a pull request reverting this file to the model served before.",
        ]
    )


def ref_or_none(cfg: Config, env: str) -> ModelRef | None:
    ref = read_model_ref(overlay_dir(cfg, env))
    return None if ref.is_empty else ref


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def _serve_declared(cfg: Config, flow: Flow) -> None:
    """Make production serve exactly what its model.yaml names: copy if needed, verify, register, champion, serve."""
    from .artifacts import ArtifactStore, StoredModel
    from .registry import lineage_tags

    env = cfg.env("production")
    ref = ref_or_none(cfg, "production")
    if ref is None:
        flow.report.notes.append(f"{env.overlay}/{MODEL_FILE} declares no model yet (version: none): nothing to serve")
        return
    source_env, source_name, source_version = parse_source(ref.source)
    store = ArtifactStore(env)
    with flow.step("copy") as step:
        if store.has(ref.digest):
            step.status, step.detail = "skipped", "already in the production store"
        elif source_env == env.name:
            raise PromotionError(
                f"production's model.yaml names {ref.storage_uri}, which is missing from the production store: "
                "revert model.yaml (`make rollback`) or retrain"
            )
        else:
            source_store = ArtifactStore(cfg.env(source_env))
            stored = store.copy_from(source_store, source_store.uri_for(ref.digest), ref.digest)
            step.detail = f"{source_env} -> {stored.uri}"
        store.verify(ref.storage_uri, ref.digest)  # the URI in model.yaml, not just the digest
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
                    f"model.yaml names {ref.source} with digest {ref.digest}, but that version has {source.digest}"
                )
            lineage = {k: v for k, v in source.tags.items() if k not in ("storage_uri", TAG_GATES, TAG_SMOKE_P95)}
            lineage.update(
                lineage_tags(
                    source_env=source_env,
                    source_registry=cfg.env(source_env).registry_uri,
                    source_version=source_version,
                )
            )
            mv = registry.register(StoredModel(ref.storage_uri, ref.digest), lineage)
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


def serve_and_smoke(cfg: Config, flow: Flow, env: Environment, model: str) -> float | None:
    """Switch the environment's endpoint to its model.yaml and smoke-test it; returns the p95 latency.

    Local backend: the MLServer endpoint (blue/green, verified digest). Cluster backend: staging syncs
    its overlay here (Argo CD or kubectl); production's workflow syncs and smoke-tests in its next
    steps (`make sync`, `make smoke`), so this flow only records that.
    """
    from . import serving

    if env.backend != "local":
        if env.name == "production":
            flow.skip("deploy", "the workflow syncs production next (`make sync ENV=production`)")
            flow.skip("smoke", "the workflow smoke-tests production next (`make smoke ENV=production`)")
            return None
        from .cluster import sync

        with flow.step("deploy", "serving") as step:
            result = sync.sync(cfg, env)
            step.detail = f"{result.method}: {result.target} {result.detail}"
            flow.report.endpoint = {"url": env.cluster.endpoint_url, "sync": asdict(result)}
        flow.skip("smoke", f"smoke-test {env.cluster.endpoint_url} with `make smoke ENV={env.name}`")
        return None
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


def open_rollback(cfg: Config, pulls: gitops.PullRequests | None = None) -> tuple[gitops.PullRequest, ModelRef]:
    """Open a PR reverting production's model.yaml to the model it named before the current one."""
    from .artifacts import ArtifactStore

    path = overlay_file(cfg, "production")
    committed = gitops.show(cfg.root, "HEAD", path)
    if committed is None:
        raise PromotionError(f"{path} is not committed on main; nothing to roll back")
    current = ref_from_text(committed, f"{path} at HEAD")
    target_text, target, commit = None, None, None
    for commit, text in gitops.file_history(cfg.root, path):
        if text is None:
            continue
        ref = ref_from_text(text, f"{path} at {commit[:12]}")
        if not ref.is_empty and ref.digest != current.digest:
            target_text, target = text, ref
            break
    if target is None or target_text is None:
        raise PromotionError(f"nothing to roll back to: {path} has named no model other than the current one on main")
    # The revert must name a model production can serve right away.
    ArtifactStore(cfg.env("production")).verify(target.storage_uri, target.digest)
    pulls = pulls or gitops.pull_requests(cfg)
    branch = f"{ROLLBACK_PREFIX}{target.name}-{target.digest[7:19]}"
    what = "empty" if current.is_empty else f"v{current.version} ({current.digest[:19]})"
    title = f"Roll back {target.name} in production to v{target.version} ({target.digest[7:19]})"
    body = "\n".join(
        [
            f"## Roll back `{target.name}` in production to v{target.version}",
            "",
            f"Reverts `{path}` to its content at {commit[:12]}: production serves {what} now and will serve "
            f"v{target.version} (`{target.digest}`, source `{target.source}`) again. That model is still in the "
            "production store; merging this and running `make production` switches serving back.",
            "",
            "| | current | after the rollback |",
            "|---|---|---|",
            f"| version | {current.version} | {target.version} |",
            f"| digest | `{current.digest}` | `{target.digest}` |",
            f"| source | `{current.source}` | `{target.source}` |",
        ]
    )
    return pulls.open_or_update(branch, BASE_BRANCH, title, body, {path: target_text}), target


# --- status ----------------------------------------------------------------------------------


def environment_status(cfg: Config) -> list[dict[str, Any]]:
    """Per environment: registry versions and aliases, the overlay's model.yaml, the endpoint."""
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
            ref = read_model_ref(overlay_dir(cfg, name))
            declared = "none" if ref.is_empty else f"v{ref.version} {ref.digest[:19]} ({ref.source})"
        except ModelRefError as exc:
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
                "model.yaml": declared,
                "endpoint": serves,
                "registry": [mv.to_dict() for mv in versions],
            }
        )
    return rows
