"""Load and validate config/environments.yaml: the single description of every environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import MlopsError

ENVIRONMENTS = ("sandbox", "staging", "production")
BACKENDS = ("local", "cluster")
PROMOTIONS = ("transit", "retrain")
BACKEND_OVERRIDE_VAR = "MLOPS_BACKEND"
LOCAL_ROOT_VAR = "MLOPS_LOCAL_ROOT"


class ConfigError(MlopsError):
    """A user-facing configuration mistake; the message is one sentence naming the input."""


@dataclass(frozen=True)
class ClusterSettings:
    kfp_endpoint: str
    registry_uri: str
    artifact_root: str
    endpoint_url: str


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

    def load_pipelines(self) -> dict:
        from . import pipelines

        return pipelines.load(self.root, self.pipelines)

    def env(self, name: str) -> Environment:
        if name not in self.environments:
            raise ConfigError(f"unknown environment {name!r}: expected one of {', '.join(self.environments)}")
        return self.environments[name]


def find_root(start: Path | None = None) -> Path:
    """The repository root: the nearest folder holding config/environments.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "config" / "environments.yaml").is_file():
            return folder
    raise ConfigError(f"no config/environments.yaml found in {here} or its parents: run from the project repository")


def _require(mapping: dict[str, Any], key: str, where: str) -> Any:
    if key not in mapping or mapping[key] in (None, ""):
        raise ConfigError(f"config/environments.yaml: {where}.{key} is missing")
    return mapping[key]


def _gates(raw: Any, where: str) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config/environments.yaml: {where}.gates must be a mapping of name to number")
    gates = {}
    for key, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config/environments.yaml: {where}.gates.{key} is {value!r}; expected a number")
        gates[key] = float(value)
    return gates


def load(root: Path | None = None) -> Config:
    root = find_root(root)
    path = root / "config" / "environments.yaml"
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    promotion = _require(raw, "promotion", "")
    if promotion not in PROMOTIONS:
        raise ConfigError(f"config/environments.yaml: promotion is {promotion!r}; expected transit or retrain")
    # MLOPS_LOCAL_ROOT keeps local state elsewhere (act runs workflows in a copy of the tree).
    local_root = Path(os.environ.get(LOCAL_ROOT_VAR) or root / raw.get("local_root", ".mlops"))
    override = os.environ.get(BACKEND_OVERRIDE_VAR, "").strip()
    if override and override not in BACKENDS:
        raise ConfigError(f"{BACKEND_OVERRIDE_VAR}={override!r}; expected local or cluster")
    envs_raw = _require(raw, "environments", "")
    environments = {}
    for name in ENVIRONMENTS:
        where = f"environments.{name}"
        env_raw = _require(envs_raw, name, "environments")
        backend = override or env_raw.get("backend", "local")
        if backend not in BACKENDS:
            raise ConfigError(f"config/environments.yaml: {where}.backend is {backend!r}; expected local or cluster")
        cluster_raw = _require(env_raw, "cluster", where)
        environments[name] = Environment(
            name=name,
            namespace=_require(env_raw, "namespace", where),
            backend=backend,
            serving=bool(env_raw.get("serving", name != "sandbox")),
            cluster=ClusterSettings(
                **{
                    key: str(_require(cluster_raw, key, f"{where}.cluster"))
                    for key in ("kfp_endpoint", "registry_uri", "artifact_root", "endpoint_url")
                }
            ),
            gates=_gates(env_raw.get("gates"), where),
            auto_merge=bool(env_raw.get("auto_merge", False)),
            local_dir=local_root / name,
        )
    return Config(
        root=root,
        project=_require(raw, "project", ""),
        model_name=_require(raw, "model_name", ""),
        promotion=promotion,
        kubernetes_version=str(_require(raw, "kubernetes_version", "")),
        local_root=local_root,
        environments=environments,
        pipelines=_pipelines(raw.get("pipelines")),
    )


def _pipelines(raw: Any) -> dict[str, str]:
    from .pipelines import REQUIRED

    if not isinstance(raw, dict) or any(name not in raw for name in REQUIRED):
        raise ConfigError(
            "config/environments.yaml: pipelines must name the features and training pipelines as "
            "<module>:<function>, e.g. `training: my_model.pipelines:training_pipeline`"
        )
    return {str(name): str(target) for name, target in raw.items()}
