"""The model directory the engine registers, stores and serves: an MLflow model.

Any flavor (sklearn, xgboost, pytorch, a pyfunc, ...) as long as its `MLmodel` carries a
**signature** (input names and types, outputs) and an **input example**: they travel with the
model into every registry and store, the endpoint advertises the signature as its v2 metadata
(MLServer's MLflow runtime derives it; KServe `modelFormat: mlflow`), and the smoke test sends the
model's own example, so it never depends on the feature code of the commit being tested.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import MlopsError

MLMODEL_FILE = "MLmodel"
HOW_TO_SAVE = (
    "save it with mlflow.<flavor>.save_model(model, path, signature=infer_signature(X, predictions), "
    "input_example=<a few rows of X>)"
)


class ModelFormatError(MlopsError):
    """A model directory is not an MLflow model with a signature and an input example."""


@dataclass(frozen=True)
class Signature:
    """The signature as MLflow writes it into MLmodel: JSON lists of column or tensor specs."""

    inputs: str
    outputs: str  # "" when the model declares no output schema

    def input_names(self) -> list[str]:
        return [spec.get("name") or f"input-{i}" for i, spec in enumerate(json.loads(self.inputs))]

    def summary(self) -> str:
        """`a: double, b: long` (tensors: `input-0: tensor float64 [-1, 4]`)."""
        parts = []
        for index, spec in enumerate(json.loads(self.inputs)):
            name = spec.get("name") or f"input-{index}"
            if spec.get("type") == "tensor":
                tensor = spec.get("tensor-spec", {})
                parts.append(f"{name}: tensor {tensor.get('dtype')} {tensor.get('shape')}")
            else:
                parts.append(f"{name}: {spec.get('type')}")
        return ", ".join(parts)


def signature_from_mlmodel(text: str, where: str) -> Signature:
    """The signature of an MLmodel file's text; ModelFormatError naming `where` if absent."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ModelFormatError(f"{where} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("flavors"), dict):
        raise ModelFormatError(f"{where} lists no flavors: it is not an MLflow MLmodel file; {HOW_TO_SAVE}")
    signature = doc.get("signature")
    if not isinstance(signature, dict) or not signature.get("inputs"):
        raise ModelFormatError(f"{where} has no signature (inputs); {HOW_TO_SAVE}")
    if not isinstance(doc.get("saved_input_example_info"), dict):
        raise ModelFormatError(f"{where} has no input example; {HOW_TO_SAVE}")
    try:
        json.loads(signature["inputs"])
        outputs = signature.get("outputs") or ""
        if outputs:
            json.loads(outputs)
    except (TypeError, ValueError):
        raise ModelFormatError(f"{where}: signature.inputs/outputs are not the JSON MLflow writes") from None
    return Signature(inputs=signature["inputs"], outputs=outputs)


def check_model_dir(model_dir: Path | str) -> Signature:
    """The directory's signature, after checking it is an MLflow model with an input example."""
    path = Path(model_dir) / MLMODEL_FILE
    if not path.is_file():
        raise ModelFormatError(f"{model_dir} holds no {MLMODEL_FILE}: the model must be an MLflow model; {HOW_TO_SAVE}")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ModelFormatError(f"{path} cannot be read: {exc.strerror}") from None
    return signature_from_mlmodel(text, str(path))


def _mlflow_model(model_dir: Path | str) -> Any:
    from mlflow.models import Model

    check_model_dir(model_dir)
    return Model.load(str(Path(model_dir) / MLMODEL_FILE))


def input_example_frame(model_dir: Path | str) -> Any:
    """The input example saved with the model, as MLflow loads it (a DataFrame for columns, an
    ndarray or dict of them for tensors)."""
    model = _mlflow_model(model_dir)
    try:
        example = model.load_input_example(str(model_dir))
    except (OSError, ValueError, KeyError) as exc:
        raise ModelFormatError(f"{model_dir}: the input example cannot be loaded: {exc}") from None
    if example is None:
        raise ModelFormatError(f"{model_dir}/{MLMODEL_FILE} names no input example; {HOW_TO_SAVE}")
    return example


def mlflow_signature(model_dir: Path | str) -> Any:
    """The signature as an mlflow.models.ModelSignature."""
    return _mlflow_model(model_dir).signature


def load_pyfunc(model_dir: Path | str) -> Any:
    """The model as MLflow's generic python_function: what MLServer's MLflow runtime serves."""
    import mlflow.pyfunc

    check_model_dir(model_dir)
    return mlflow.pyfunc.load_model(str(model_dir))
