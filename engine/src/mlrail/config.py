"""Load and validate config/environments.yaml: the single description of every environment.

The file is checked against a pydantic schema (strict types, required keys, no unknown keys);
every mistake is one line naming the file, the line, the key path and the expected form, e.g.
`config/environments.yaml:31: environments.staging.gate: unknown key; expected one of ...`.
`mlrail config-schema` prints the schema as JSON Schema; `mlrail check-config` applies it.

Two environment variables are read here and nowhere else: MLOPS_BACKEND (the one documented
override of every environment's `backend`) and MLOPS_LOCAL_ROOT (where local state lives).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import MlopsError

ENVIRONMENTS = ("sandbox", "staging", "production")
BACKENDS = ("local", "cluster")
PROMOTIONS = ("transit", "retrain")
BACKEND_OVERRIDE_VAR = "MLOPS_BACKEND"
LOCAL_ROOT_VAR = "MLOPS_LOCAL_ROOT"
CONFIG_FILE = "config/environments.yaml"
GATE_FORMS = "min_<metric>, max_regression or max_latency_ms"


class ConfigError(MlopsError):
    """A user-facing configuration mistake; the message is one line naming the file, line and key.

    `problems` holds every mistake found (one line each); the message is the first of them."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = problems or [message]


# --- the schema ---------------------------------------------------------------------------------

GateName = Annotated[str, Field(pattern=r"^(min_[A-Za-z0-9_.\-]+|max_regression|max_latency_ms)$")]
ParameterName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
PipelineTarget = Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]
# An OCI image name without tag or digest: the engine appends the digest it promotes.
ImageName = Annotated[
    str,
    Field(pattern=r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$"),
]
Parameters = dict[ParameterName, Any]


class _Strict(BaseModel):
    # strict: `"false"` is not a boolean and `1.32` is not a string; forbid: a misspelled key is an error.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ClusterSettings(_Strict):
    """Where the environment's services are on the cluster backend."""

    kfp_endpoint: str = Field(description="Kubeflow Pipelines API URL")
    registry_uri: str = Field(description="MLflow tracking/registry URI")
    artifact_root: str = Field(description="the environment's model store (s3://bucket[/prefix] or file://)")
    endpoint_url: str = Field(description="the KServe InferenceService URL")


class Timeouts(_Strict):
    """Deadlines for every network call and wait (seconds); raise one when a slow service needs it."""

    connect_s: float = Field(5.0, gt=0, description="connecting to a service")
    read_s: float = Field(20.0, gt=0, description="waiting for one response")
    deadline_s: float = Field(30.0, gt=0, description="one logical call, retries included")
    run_s: float = Field(3600.0, gt=0, description="one pipeline run")
    ready_s: float = Field(60.0, gt=0, description="an endpoint becoming ready")
    lock_s: float = Field(600.0, ge=0, description="waiting for another run of the same environment (0: refuse)")
    poll_s: float = Field(5.0, gt=0, description="between two status reads of a pipeline run or an Argo CD sync")


class PipelineSettings(_Strict):
    parameters: Parameters = Field(
        default_factory=dict, description="passed to the pipeline function as keyword arguments"
    )


class Pipelines(BaseModel):
    """name -> <module>:<function>; features and training are required, more may be declared."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    __pydantic_extra__: dict[str, PipelineTarget]
    features: PipelineTarget
    training: PipelineTarget


class _EnvironmentBase(_Strict):
    namespace: str = Field(min_length=1, description="the Kubernetes namespace of this environment")
    backend: Literal["local", "cluster"] = Field("local", description="overridden by MLOPS_BACKEND when set")
    serving: bool | None = Field(None, description="whether the environment has an endpoint (default: not sandbox)")
    auto_merge: bool = Field(False, description="retrain: merge the deployment PR when the gates pass")
    cluster: ClusterSettings
    parameters: dict[str, Parameters] = Field(
        default_factory=dict, description="per pipeline, overrides of <pipeline>.parameters in this environment"
    )


class SandboxEnvironment(_EnvironmentBase):
    gates: dict[GateName, float] = Field(default_factory=dict, description="optional in the sandbox")


class PromotedEnvironment(_EnvironmentBase):
    # Promotion decides on these: an environment without gates would pass every candidate.
    gates: Annotated[dict[GateName, float], Field(min_length=1, description=f"required: {GATE_FORMS}")]


class EnvironmentsModel(_Strict):
    sandbox: SandboxEnvironment
    staging: PromotedEnvironment
    production: PromotedEnvironment


class ConfigModel(_Strict):
    """config/environments.yaml"""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, title="mlrail config/environments.yaml")
    project: str = Field(min_length=1)
    model_name: str = Field(min_length=1)
    promotion: Literal["transit", "retrain"]
    kubernetes_version: str = Field(pattern=r"^1\.\d+$", description='quoted, e.g. "1.32"')
    image: ImageName = Field(description="the project image without tag or digest, e.g. ghcr.io/org/project")
    local_root: str = Field(".mlops", min_length=1)
    pipelines: Pipelines
    features: PipelineSettings = Field(default_factory=PipelineSettings)
    training: PipelineSettings = Field(default_factory=PipelineSettings)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    pull_requests: Literal["local", "github"] | None = Field(
        None, description="where promotion PRs are opened (default: github if production runs on a cluster, else local)"
    )
    environments: EnvironmentsModel


def json_schema() -> dict[str, Any]:
    """The JSON Schema of config/environments.yaml (editors, the PR check, `mlrail config-schema`)."""
    return ConfigModel.model_json_schema()


# --- what the engine uses ------------------------------------------------------------------------

DEFAULT_TIMEOUTS = Timeouts()


@dataclass(frozen=True)
class Environment:
    name: str
    namespace: str
    backend: str
    serving: bool
    cluster: ClusterSettings
    gates: dict[str, float]
    auto_merge: bool
    local_dir: Path  # .mlops/<env>: this environment's registry, artifact store and runs
    timeouts: Timeouts = DEFAULT_TIMEOUTS
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)  # pipeline -> overrides

    @property
    def overlay(self) -> str:
        return f"deploy/overlays/{self.name}"

    @property
    def registry_uri(self) -> str:
        if self.backend == "cluster":
            return self.cluster.registry_uri
        return f"sqlite:///{self.local_dir / 'registry.db'}"

    @property
    def artifact_root(self) -> str:
        if self.backend == "cluster":
            return self.cluster.artifact_root
        return str(self.local_dir / "artifacts")

    @property
    def pipeline_root(self) -> Path:
        return self.local_dir / "pipeline-root"


@dataclass(frozen=True)
class Config:
    root: Path
    project: str
    model_name: str
    promotion: str
    kubernetes_version: str
    local_root: Path
    environments: dict[str, Environment] = field(default_factory=dict)
    pipelines: dict[str, str] = field(default_factory=dict)  # name -> "module:function"
    image: str = ""
    timeouts: Timeouts = DEFAULT_TIMEOUTS
    pull_requests: str | None = None  # None: by production's backend (gitops.backend_name)
    pipeline_parameters: dict[str, dict[str, Any]] = field(default_factory=dict)  # features/training.parameters

    def load_pipelines(self, image: str | None = None) -> dict:
        """name -> pipeline function; `image` (`<image>@sha256:...`) is the PROJECT_IMAGE they compile against."""
        from . import pipelines

        return pipelines.load(self.root, self.pipelines, image=image)

    def env(self, name: str) -> Environment:
        if name not in self.environments:
            raise ConfigError(f"unknown environment {name!r}: expected one of {', '.join(self.environments)}")
        return self.environments[name]

    def parameters(self, pipeline: str, env: str) -> dict[str, Any]:
        """`<pipeline>.parameters`, overridden by `environments.<env>.parameters.<pipeline>`."""
        return {**self.pipeline_parameters.get(pipeline, {}), **self.env(env).parameters.get(pipeline, {})}

    def parameter_sources(self, pipeline: str, env: str) -> dict[str, str]:
        """name -> the config key it came from, for error messages."""
        sources = {name: f"{pipeline}.parameters.{name}" for name in self.pipeline_parameters.get(pipeline, {})}
        for name in self.env(env).parameters.get(pipeline, {}):
            sources[name] = f"environments.{env}.parameters.{pipeline}.{name}"
        return sources


def find_root(start: Path | None = None) -> Path:
    """The repository root: the nearest folder holding config/environments.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_FILE).is_file():
            return folder
    raise ConfigError(f"no {CONFIG_FILE} found in {here} or its parents: run from the project repository")


# --- YAML with line numbers -------------------------------------------------------------------------


class _Lines:
    """Key path (tuple of keys and list indexes) -> 1-based line of that key in the file."""

    def __init__(self) -> None:
        self.lines: dict[tuple, int] = {(): 1}

    def of(self, path: tuple) -> int:
        # A missing key has no line: use its nearest parent's.
        for end in range(len(path), -1, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return 1


def _load_yaml(text: str, where: str) -> tuple[Any, _Lines]:
    lines = _Lines()
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, lines
        duplicates: list[str] = []
        data = _construct(loader, node, (), lines, duplicates, where)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        problem = " ".join(str(exc.problem or exc.context or "malformed").split())
        raise ConfigError(f"{where}:{line}: not valid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()
    if duplicates:
        raise ConfigError(duplicates[0], duplicates)
    return data, lines


def _construct(
    loader: yaml.SafeLoader, node: yaml.Node, path: tuple, lines: _Lines, duplicates: list[str], where: str
) -> Any:
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # YAML merge keys (<<: *anchor)
        mapping: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            key_path = (*path, key)
            if key in mapping:
                duplicates.append(f"{where}:{key_node.start_mark.line + 1}: {_dotted(key_path)}: duplicate key")
            lines.lines.setdefault(key_path, key_node.start_mark.line + 1)
            mapping[key] = _construct(loader, value_node, key_path, lines, duplicates, where)
        return mapping
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            lines.lines.setdefault((*path, index), item.start_mark.line + 1)
            items.append(_construct(loader, item, (*path, index), lines, duplicates, where))
        return items
    return loader.construct_object(node, deep=True)


def _dotted(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


# --- pydantic errors as one line each ---------------------------------------------------------------


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, str):
        return f"the string {value!r}"
    return repr(value)


def _allowed_keys(path: tuple) -> list[str]:
    """The keys the schema allows in the mapping at `path` (walking the models)."""
    model: Any = ConfigModel
    for part in path:
        fields = getattr(model, "model_fields", None)
        if fields is None:
            return []
        if part not in fields:
            return []
        annotation = fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return list(getattr(model, "model_fields", {}))


def _message(error: dict[str, Any], path: tuple) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    last = path[-1] if path else ""
    if kind == "extra_forbidden":
        allowed = _allowed_keys(path[:-1])
        return "unknown key" + (f"; expected one of {', '.join(allowed)}" if allowed else "")
    if kind == "missing":
        if last == "gates":
            return f"required: promotion depends on this environment's gates ({GATE_FORMS})"
        return "required key is missing"
    if kind == "bool_type":
        quoted = " (quoted: remove the quotes)" if isinstance(value, str) else ""
        return f"is {_kind(value)}{quoted}; expected true or false"
    if kind in ("float_type", "int_type", "float_parsing", "int_parsing"):
        return f"is {_kind(value)}; expected a number"
    if kind == "string_type":
        return f"is {_kind(value)}; expected a string" + (" (quote it)" if not isinstance(value, dict | list) else "")
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        if path == ("environments",):
            return f"is {_kind(value)}; expected a mapping of sandbox, staging and production"
        return f"is {_kind(value)}; expected a mapping (key: value lines)"
    if kind == "literal_error":
        return f"is {_kind(value)}; expected {ctx.get('expected', '')}"
    if kind == "too_short" and last == "gates":
        return f"is empty; promotion depends on this environment's gates ({GATE_FORMS})"
    if kind == "string_pattern_mismatch":
        if len(path) >= 2 and path[-2] == "gates":
            return f"not a gate; expected {GATE_FORMS}"
        if path[:1] == ("pipelines",):
            return f"is {value!r}; expected <module>:<function>, e.g. my_model.pipelines:training_pipeline"
        if path == ("image",):
            return f"is {value!r}; expected an image name without tag or digest, e.g. ghcr.io/my-org/my-model"
        if path == ("kubernetes_version",):
            return f'is {value!r}; expected a quoted minor version, e.g. "1.32"'
        return f"{value!r} is not a valid name; expected a Python identifier"
    if kind == "greater_than":
        return f"is {_kind(value)}; expected a number greater than {ctx.get('gt')}"
    return f"{error['msg'][0].lower()}{error['msg'][1:]} (got {_kind(value)})"


def _problems(exc: ValidationError, lines: _Lines, where: str) -> list[str]:
    found = []
    for error in exc.errors(include_url=False):
        # pydantic reports a bad mapping key as (..., key, "[key]"): the key itself is the place.
        path = tuple(part for part in error["loc"] if part != "[key]")
        # A missing key is often the consequence of a misspelled one: report the misspelling first.
        rank = (error["type"] == "missing", lines.of(path))
        found.append((rank, f"{where}:{lines.of(path)}: {_dotted(path)}: {_message(error, path)}"))
    return [text for _, text in sorted(found, key=lambda item: item[0])]


def _raise(problems: list[str]) -> None:
    more = f" (and {len(problems) - 1} more: run `mlrail check-config`)" if len(problems) > 1 else ""
    raise ConfigError(problems[0] + more, problems)


def _semantic_problems(model: ConfigModel, lines: _Lines, where: str) -> list[str]:
    """Rules across keys, which the per-key schema cannot state."""
    problems = []
    names = set(model.pipelines.model_dump())
    for env_name in ENVIRONMENTS:
        for pipeline in getattr(model.environments, env_name).parameters:
            if pipeline not in names:
                path = ("environments", env_name, "parameters", pipeline)
                problems.append(
                    f"{where}:{lines.of(path)}: {_dotted(path)}: no such pipeline; expected one of "
                    f"{', '.join(sorted(names))} (the keys of pipelines:)"
                )
    return problems


# --- loading --------------------------------------------------------------------------------------------


def validate_text(text: str, where: str = CONFIG_FILE) -> ConfigModel:
    """Validate the text of config/environments.yaml; ConfigError lists every problem, one line each."""
    data, lines = _load_yaml(text, where)
    try:
        model = ConfigModel.model_validate(data)
    except ValidationError as exc:
        _raise(_problems(exc, lines, where))
    problems = _semantic_problems(model, lines, where)
    if problems:
        _raise(problems)
    return model


def _load_text(path: Path, where: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read it ({type(exc).__name__}: {exc})") from None


def load(root: Path | None = None) -> Config:
    root = find_root(root)
    text = _load_text(root / CONFIG_FILE, CONFIG_FILE)
    model = validate_text(text, CONFIG_FILE)
    # MLOPS_LOCAL_ROOT keeps local state elsewhere (act runs workflows in a copy of the tree).
    local_root = Path(os.environ.get(LOCAL_ROOT_VAR) or root / model.local_root)
    override = os.environ.get(BACKEND_OVERRIDE_VAR, "").strip()
    if override and override not in BACKENDS:
        raise ConfigError(f"{BACKEND_OVERRIDE_VAR}={override!r}; expected local or cluster")
    environments = {}
    for name in ENVIRONMENTS:
        raw = getattr(model.environments, name)
        environments[name] = Environment(
            name=name,
            namespace=raw.namespace,
            backend=override or raw.backend,
            serving=raw.serving if raw.serving is not None else name != "sandbox",
            cluster=raw.cluster,
            gates={key: float(value) for key, value in raw.gates.items()},
            auto_merge=raw.auto_merge,
            local_dir=local_root / name,
            timeouts=model.timeouts,
            parameters={pipeline: dict(values) for pipeline, values in raw.parameters.items()},
        )
    return Config(
        root=root,
        project=model.project,
        model_name=model.model_name,
        promotion=model.promotion,
        kubernetes_version=model.kubernetes_version,
        local_root=local_root,
        environments=environments,
        pipelines=dict(model.pipelines.model_dump()),
        image=model.image,
        timeouts=model.timeouts,
        pull_requests=model.pull_requests,
        pipeline_parameters={"features": dict(model.features.parameters), "training": dict(model.training.parameters)},
    )


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"
