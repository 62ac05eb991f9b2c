"""Feature pipeline: builds this environment's feature snapshot. Decoupled from training so a
feature change can be tried in sandbox without touching how models are trained or served."""

from kfp import dsl
from kfp.dsl import Dataset

from ..components.ops import make_features


@dsl.pipeline(
    name="{{ cookiecutter.project }}-features",
    description="Build the feature table and record its snapshot digest.",
)
def feature_pipeline(test_fraction: float = 0.2, seed: int = 42) -> Dataset:
    features = make_features(test_fraction=test_fraction, seed=seed)
    features.set_display_name("make features")
    features.set_cpu_limit("1").set_memory_limit("1G")
    return features.outputs["features"]
