"""Feature creation: raw measurements -> model features with a stable train/test split."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

TARGET = "target"
SPLIT = "split"


def load_raw() -> pd.DataFrame:
    """The raw data: scikit-learn's breast cancer set, which ships inside the package."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.frame.copy()
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    return frame


def build_features(raw: pd.DataFrame, test_fraction: float = 0.2, seed: int = 42) -> pd.DataFrame:
    """Derive features and assign each row to train or test, deterministically."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction is {test_fraction}; expected a number between 0 and 1")
    frame = raw.copy()
    # Ratios and logs make the scale-heavy size measurements comparable across tumours.
    frame["area_to_perimeter"] = frame["mean_area"] / frame["mean_perimeter"]
    frame["log_mean_area"] = np.log1p(frame["mean_area"])
    frame["log_worst_area"] = np.log1p(frame["worst_area"])
    frame["concavity_x_points"] = frame["mean_concavity"] * frame["mean_concave_points"]
    rng = np.random.default_rng(seed)
    frame[SPLIT] = np.where(rng.random(len(frame)) < test_fraction, "test", "train")
    return frame


def snapshot_digest(path: Path | str) -> str:
    """Content hash of a features file: the data snapshot recorded with every model."""
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_features(path: Path | str, test_fraction: float = 0.2, seed: int = 42) -> dict:
    """Build the features and write them as CSV; returns the snapshot description."""
    frame = build_features(load_raw(), test_fraction=test_fraction, seed=seed)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, float_format="%.10g")
    return {
        "snapshot": snapshot_digest(path),
        "rows": len(frame),
        "test_rows": int((frame[SPLIT] == "test").sum()),
        "features": len(feature_columns(frame)),
    }


def feature_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in (TARGET, SPLIT)]
