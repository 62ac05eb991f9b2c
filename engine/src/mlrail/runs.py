"""What a pipeline run returns, on either backend: the local runner and the KFP client share these."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import MlopsError


class PipelineRunError(MlopsError):
    """A pipeline run failed; the message names the environment and the pipeline."""


@dataclass(frozen=True)
class FeatureRun:
    env: str
    features_uri: str
    snapshot: str
    rows: int
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingRun:
    env: str
    features_uri: str
    model_uri: str  # the model directory (an MLflow model)
    metrics: dict[str, float]
    snapshot: str
    params: dict[str, Any] = field(default_factory=dict)  # every parameter the run used, defaults included
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)
