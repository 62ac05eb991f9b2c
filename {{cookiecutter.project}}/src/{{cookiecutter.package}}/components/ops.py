"""The pipeline steps as Kubeflow components, in the style of the KFP samples: each step is a
thin wrapper that imports its pure function at run time, inside the project image.

Kept apart from the pure modules because the KFP executor imports those at run time with a
runtime-only `kfp.dsl` that has no `component` decorator.
"""

import os

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

# Components run in the project image, which already holds this package and its pinned
# dependencies: nothing is pip-installed when a step starts. CI sets PROJECT_IMAGE to the
# image digest it just pushed, so a compiled pipeline names exactly one image.
DEFAULT_IMAGE = "{{ cookiecutter.container_registry }}/{{ cookiecutter.project }}:0.1.0"
BASE_IMAGE = os.environ.get("PROJECT_IMAGE") or DEFAULT_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def make_features(features: Output[Dataset], test_fraction: float = 0.2, seed: int = 42):
    """Create the feature table and record its snapshot digest."""
    from {{ cookiecutter.package }}.components.features import write_features

    summary = write_features(features.path, test_fraction=test_fraction, seed=seed)
    features.metadata.update(summary)


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def train(
    features: Input[Dataset],
    model: Output[Model],
    c: float = 1.0,
    max_iter: int = 1000,
    seed: int = 42,
):
    """Train on the feature snapshot and save it as an MLflow model directory (signature + input example)."""
    import pandas as pd

    from {{ cookiecutter.package }}.components.train import save_model, train_model

    frame = pd.read_csv(features.path)
    fitted = train_model(frame, c=c, max_iter=max_iter, seed=seed)
    save_model(fitted, model.path, frame)
    model.metadata.update(
        {"format": "mlflow", "framework": "sklearn", "snapshot": features.metadata.get("snapshot", "unknown")}
    )


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(features: Input[Dataset], model: Input[Model], metrics: Output[Metrics]):
    """Load the MLflow model back and score it on the test split; the metrics file is what registration reads."""
    import json

    import pandas as pd

    from {{ cookiecutter.package }}.components.evaluate import evaluate_model
    from {{ cookiecutter.package }}.components.train import load_model

    results = evaluate_model(load_model(model.path), pd.read_csv(features.path))
    for name, value in results.items():
        metrics.log_metric(name, value)
    with open(metrics.path, "w") as handle:
        json.dump(results, handle, indent=2, sort_keys=True)
