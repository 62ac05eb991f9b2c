"""Evaluation: the held-out metrics every gate and promotion PR reads."""

import pandas as pd
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from .features import SPLIT, TARGET, feature_columns


def evaluate_model(model, frame: pd.DataFrame) -> dict[str, float]:
    """Metrics on the test split, rounded so that reruns compare equal."""
    test = frame[frame[SPLIT] == "test"]
    if test.empty:
        raise ValueError("the features hold no test rows; check test_fraction")
    features = test[feature_columns(frame)]
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
