"""Training: features -> a fitted scikit-learn pipeline saved as KServe expects it."""

from pathlib import Path

import joblib
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from .features import SPLIT, TARGET, feature_columns

# KServe's sklearn runtime (MLServer) loads this file name from the storageUri directory.
MODEL_FILE = "model.joblib"


def train_model(frame: pd.DataFrame, c: float = 1.0, max_iter: int = 1000, seed: int = 42) -> Pipeline:
    """Fit a scaled logistic regression on the train split."""
    if c <= 0:
        raise ValueError(f"c is {c}; expected a positive regularisation strength")
    train = frame[frame[SPLIT] == "train"]
    if train.empty:
        raise ValueError("the features hold no train rows; check test_fraction")
    model = Pipeline(
        [
            ("scale", StandardScaler()),
            ("classify", LogisticRegression(C=c, max_iter=max_iter, random_state=seed)),
        ]
    )
    model.fit(train[feature_columns(frame)].to_numpy(), train[TARGET].to_numpy())
    return model


def save_model(model: Pipeline, directory: Path | str) -> Path:
    """Write the model into its own directory, the unit KServe downloads and serves."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / MODEL_FILE
    joblib.dump(model, path)
    return path


def load_model(directory: Path | str) -> Pipeline:
    return joblib.load(Path(directory) / MODEL_FILE)
