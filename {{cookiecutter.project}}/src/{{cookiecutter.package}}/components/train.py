"""Training: features -> a fitted scikit-learn pipeline saved as an MLflow model.

The MLflow model directory is the engine's contract: its `MLmodel` carries the signature (input
columns and types, output) and a few real input rows as the example, so every registry, store and
endpoint knows what the model takes, whatever the framework. KServe serves it with
`modelFormat: mlflow` (MLServer's MLflow runtime); the smoke test sends the model's own example.
"""

import hashlib
import os
import pickle
import uuid
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import mlflow.sklearn
import numpy
import pandas as pd
import sklearn
from mlflow.models import Model, infer_signature
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from .features import SPLIT, TARGET, feature_columns

EXAMPLE_ROWS = 5  # real test rows saved with the model: the smoke test's requests


def train_model(frame: pd.DataFrame, c: float = 1.0, max_iter: int = 1000, seed: int = 42) -> Pipeline:
    """Fit a scaled logistic regression on the train split (on named columns: the model checks them)."""
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
    model.fit(train[feature_columns(frame)], train[TARGET].to_numpy())
    return model


def save_model(model: Pipeline, directory: Path | str, frame: pd.DataFrame) -> Path:
    """Write the model as an MLflow model directory, with its signature and input example.

    Reproducible: the same model gives the same bytes, so its content digest (the registry and
    store key) is stable across reruns. Pickle rather than MLflow's default skops, whose archive
    embeds the time of writing; the creation time is SOURCE_DATE_EPOCH (0 if unset), the
    reproducible-builds convention, since the registry already records when a version was made.
    """
    directory = Path(directory)
    columns = feature_columns(frame)
    features = frame[columns]
    test = frame[frame[SPLIT] == "test"]
    example = (test if not test.empty else frame)[columns].head(EXAMPLE_ROWS).reset_index(drop=True)
    content = hashlib.sha256(pickle.dumps(model)).hexdigest()
    created = datetime.fromtimestamp(int(os.environ.get("SOURCE_DATE_EPOCH", "0")), UTC).replace(tzinfo=None)
    mlflow.sklearn.save_model(
        model,
        str(directory),
        mlflow_model=Model(model_uuid=uuid.uuid5(uuid.NAMESPACE_OID, content).hex, utc_time_created=created),
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_PICKLE,
        signature=infer_signature(features, model.predict(features)),
        input_example=example,
        # Given explicitly: MLflow would otherwise infer them by importing the model in a subprocess.
        pip_requirements=[
            f"mlflow=={mlflow.__version__}",
            f"scikit-learn=={sklearn.__version__}",
            f"pandas=={pd.__version__}",
            f"numpy=={numpy.__version__}",
        ],
    )
    return directory


def load_model(directory: Path | str) -> Pipeline:
    """The fitted pipeline back from its MLflow model directory."""
    return mlflow.sklearn.load_model(str(directory))
