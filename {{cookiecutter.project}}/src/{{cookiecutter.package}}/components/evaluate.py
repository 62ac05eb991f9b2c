"""Evaluation: the held-out metrics every gate and promotion PR reads."""

from __future__ import annotations

import pandas as pd
from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from . import BASE_IMAGE
from .features import SPLIT, TARGET, feature_columns


def evaluate_model(model, frame: pd.DataFrame) -> dict[str, float]:
    """Metrics on the test split, rounded so that reruns compare equal."""
    test = frame[frame[SPLIT] == "test"]
    if test.empty:
        raise ValueError("the features hold no test rows; check test_fraction")
    features = test[feature_columns(frame)].to_numpy()
    truth = test[TARGET].to_numpy()
    predicted = model.predict(features)
    scores = model.predict_proba(features)[:, 1]
    metrics = {
        "accuracy": accuracy_score(truth, predicted),
        "precision": precision_score(truth, predicted, zero_division=0),
        "recall": recall_score(truth, predicted, zero_division=0),
        "f1": f1_score(truth, predicted, zero_division=0),
        "roc_auc": roc_auc_score(truth, scores),
        "test_rows": float(len(test)),
    }
    return {name: round(float(value), 6) for name, value in metrics.items()}


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def evaluate(features: Input[Dataset], model: Input[Model], metrics: Output[Metrics]):
    """Score the model on the test split; the metrics file is what registration reads."""
    import json

    import pandas as pd

    from {{ cookiecutter.package }}.components.evaluate import evaluate_model
    from {{ cookiecutter.package }}.components.train import load_model

    results = evaluate_model(load_model(model.path), pd.read_csv(features.path))
    for name, value in results.items():
        metrics.log_metric(name, value)
    with open(metrics.path, "w") as handle:
        json.dump(results, handle, indent=2, sort_keys=True)

