"""Training pipeline: features snapshot -> train -> evaluate. It reads the feature pipeline's
output by URI, so staging and production can train on the snapshot they produced."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Metrics, Model

from ..components.ops import evaluate, train


class TrainingOutputs(NamedTuple):
    model: Model
    metrics: Metrics


@dsl.pipeline(
    name="{{ cookiecutter.project }}-training",
    description="Train and evaluate a model on a feature snapshot.",
)
def training_pipeline(features_uri: str, c: float = 1.0, max_iter: int = 1000, seed: int = 42) -> TrainingOutputs:
    features = dsl.importer(artifact_uri=features_uri, artifact_class=Dataset, reimport=False)
    features.set_display_name("import features")
    trained = train(features=features.output, c=c, max_iter=max_iter, seed=seed)
    trained.set_display_name("train").set_cpu_limit("2").set_memory_limit("2G")
    scored = evaluate(features=features.output, model=trained.outputs["model"])
    scored.set_display_name("evaluate").set_cpu_limit("1").set_memory_limit("1G")
    return TrainingOutputs(model=trained.outputs["model"], metrics=scored.outputs["metrics"])
