import mlflow.pyfunc
import pandas as pd
import pytest
from mlflow.models import Model

from {{ cookiecutter.package }}.components.evaluate import evaluate_model
from {{ cookiecutter.package }}.components.features import (
    SPLIT,
    build_features,
    feature_columns,
    load_raw,
    write_features,
)
from {{ cookiecutter.package }}.components.train import (  # one name a line: fits any package name
    EXAMPLE_ROWS,
    load_model,
    save_model,
    train_model,
)


@pytest.fixture(scope="module")
def features() -> pd.DataFrame:
    return build_features(load_raw())


def test_features_are_deterministic_and_split(features):
    again = build_features(load_raw())
    pd.testing.assert_frame_equal(features, again)
    share = (features[SPLIT] == "test").mean()
    assert 0.12 < share < 0.28
    assert {"area_to_perimeter", "log_mean_area"} <= set(feature_columns(features))


def test_features_reject_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        build_features(load_raw(), test_fraction=1.5)


def test_snapshot_digest_tracks_content(tmp_path):
    first = write_features(tmp_path / "a.csv", seed=1)
    same = write_features(tmp_path / "b.csv", seed=1)
    other = write_features(tmp_path / "c.csv", seed=2)
    assert first["snapshot"] == same["snapshot"] != other["snapshot"]
    assert first["snapshot"].startswith("sha256:")


def test_train_evaluate_round_trip(features, tmp_path):
    model = train_model(features, c=1.0)
    save_model(model, tmp_path / "model", features)
    metrics = evaluate_model(load_model(tmp_path / "model"), features)
    assert metrics["accuracy"] > 0.9
    assert metrics["roc_auc"] > 0.95
    weak = evaluate_model(train_model(features, c=1e-4), features)
    assert weak["accuracy"] < metrics["accuracy"]


def test_the_model_is_an_mlflow_model_carrying_its_signature_and_example(features, tmp_path):
    """What the engine registers and serves: the signature names our feature columns, the example
    is real test rows, and the same training gives the same bytes (a stable content digest)."""
    model = train_model(features, c=1.0)
    save_model(model, tmp_path / "model", features)
    saved = Model.load(str(tmp_path / "model" / "MLmodel"))
    assert saved.signature.inputs.input_names() == feature_columns(features)
    example = saved.load_input_example(str(tmp_path / "model"))
    test = features[features[SPLIT] == "test"]
    pd.testing.assert_frame_equal(example, test[feature_columns(features)].head(EXAMPLE_ROWS).reset_index(drop=True))
    served = mlflow.pyfunc.load_model(str(tmp_path / "model"))  # what MLServer's MLflow runtime loads
    assert list(served.predict(example)) == list(model.predict(example))
    save_model(train_model(features, c=1.0), tmp_path / "again", features)
    assert _files(tmp_path / "model") == _files(tmp_path / "again")


def _files(folder):
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_train_rejects_bad_regularisation(features):
    with pytest.raises(ValueError, match="positive"):
        train_model(features, c=0)
