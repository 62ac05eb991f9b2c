"""MLServer's MLflow runtime, strict about the model's signature: the local endpoint's runtime.

The stock `mlserver_mlflow.MLflowRuntime` (what KServe runs for `modelFormat: mlflow`) lets a
request that does not match the signature reach MLflow's schema enforcement, whose exception
MLServer turns into a text `500 Internal Server Error`. This runtime checks every request against
the signature first and answers a mismatch with `422` and a JSON body naming it
(`{"error": "..."}`, MLServer's error format); an error inside the model is a JSON `500`.

This module runs inside the MLServer process (`implementation: mlrail.serving_runtime.SignatureRuntime`
in model-settings.json); `signature_problems` is a pure function the tests call directly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.types.schema import ColSpec, Schema, TensorSpec
from mlserver.codecs.numpy import to_dtype
from mlserver.errors import MLServerError
from mlserver.types import Datatype, InferenceRequest, InferenceResponse, RequestInput
from mlserver_mlflow import MLflowRuntime
from mlserver_mlflow.metadata import DefaultInputPrefix, to_metadata_tensors

SIGNATURE_MISMATCH_STATUS = 422  # a well-formed v2 request this model cannot take
MODEL_FAILURE_STATUS = 500


class SignatureMismatch(MLServerError):
    """A request that does not match the served model's signature (HTTP 422, JSON body)."""

    def __init__(self, problems: list[str], schema: Schema) -> None:
        super().__init__(
            f"the request does not match the model's signature: {'; '.join(problems)} "
            f"(the model takes {describe_schema(schema)})",
            SIGNATURE_MISMATCH_STATUS,
        )


def describe_schema(schema: Schema) -> str:
    """`a: double, b: long` for columns, `input-0: float64 [-1, 4]` for tensors."""
    parts = []
    for index, spec in enumerate(schema.inputs):
        name = spec.name or f"{DefaultInputPrefix}{index}"
        if isinstance(spec, TensorSpec):
            parts.append(f"{name}: {spec.type} {list(spec.shape)}")
        else:
            parts.append(f"{name}: {spec.type}{'' if spec.required else ' (optional)'}")
    return ", ".join(parts)


def _accepts(expected: Datatype, given: Datatype) -> bool:
    """Same datatype, or one numpy casts to it safely (int32 -> int64, int64 -> float64, ...)."""
    expected, given = Datatype(expected), Datatype(given)  # requests hold the enum's value
    if given == expected:
        return True
    if Datatype.BYTES in (given, expected) or Datatype.BOOL in (given, expected):
        return False
    return bool(np.can_cast(_numpy_type(given), _numpy_type(expected), casting="safe"))


def _numpy_type(datatype: Datatype) -> np.dtype:
    """MLServer's own datatype -> numpy mapping (its public `to_dtype`, which takes a tensor)."""
    return to_dtype(RequestInput(name="_", shape=[0], datatype=datatype, data=[]))


def _element_count(item: RequestInput) -> int | None:
    data: Any = getattr(item.data, "root", item.data)
    if isinstance(data, (list, tuple)):
        flat = np.asarray(data, dtype=object).reshape(-1) if data and isinstance(data[0], list) else data
        return len(flat)
    return None  # raw bytes (binary extension): the codec checks them


def signature_problems(schema: Schema, inputs: list[RequestInput]) -> list[str]:
    """What about `inputs` does not match the signature's input schema; [] when it matches."""
    problems: list[str] = []
    specs = {spec.name or f"{DefaultInputPrefix}{i}": spec for i, spec in enumerate(schema.inputs)}
    # the v2 datatype MLServer's MLflow runtime advertises for each input (its /v2/models metadata)
    datatypes = {tensor.name: tensor.datatype for tensor in to_metadata_tensors(schema, DefaultInputPrefix)}
    given = {item.name: item for item in inputs}
    if len(given) != len(inputs):
        problems.append("an input name appears more than once")
    required = [name for name, spec in specs.items() if not isinstance(spec, ColSpec) or spec.required]
    missing = [name for name in required if name not in given]
    unexpected = [name for name in given if name not in specs]
    if missing:
        problems.append(f"missing input{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected input{'s' if len(unexpected) > 1 else ''} {', '.join(unexpected)}")
    rows: dict[str, int] = {}
    for name, item in given.items():
        spec = specs.get(name)
        if spec is None:
            continue
        expected = datatypes[name]
        if not _accepts(expected, item.datatype):
            problems.append(f"input {name} is {Datatype(item.datatype).value}, expected {Datatype(expected).value}")
        shape = list(item.shape)
        count = _element_count(item)
        if any(dim < 0 for dim in shape) or (count is not None and count != math.prod(shape)):
            problems.append(f"input {name} has shape {shape} but holds {count} values")
            continue
        if isinstance(spec, TensorSpec):
            wanted = list(spec.shape)
            if len(wanted) != len(shape) or any(w not in (-1, s) for w, s in zip(wanted, shape, strict=False)):
                problems.append(f"input {name} has shape {shape}, expected {wanted} (-1: any size)")
        elif len(shape) > 2 or (len(shape) == 2 and shape[1] != 1) or not shape:
            problems.append(f"input {name} has shape {shape}, expected [rows] or [rows, 1] (one column)")
        else:
            rows[name] = shape[0]
    if len(set(rows.values())) > 1:
        problems.append(
            "columns differ in length: " + ", ".join(f"{name} has {count} rows" for name, count in rows.items())
        )
    return problems


class SignatureRuntime(MLflowRuntime):
    """The stock MLflow runtime, validating each request against the model's signature first."""

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        try:
            signature = self._signature
            if signature is not None and signature.inputs is not None:
                problems = signature_problems(signature.inputs, payload.inputs)
                if problems:
                    raise SignatureMismatch(problems, signature.inputs)
            return await super().predict(payload)
        except MLServerError:
            raise
        except MlflowException as exc:  # MLflow's own schema enforcement (e.g. a value it cannot convert)
            # Its message quotes the whole request before "Error: <what is wrong>"; keep the reason.
            reason = str(exc.message).rsplit("Error:", 1)[-1].strip()[:300]
            raise MLServerError(
                f"the request does not match the model's signature: {reason}",
                SIGNATURE_MISMATCH_STATUS,
            ) from None
        except Exception as exc:  # a JSON 500 naming the failure, never MLServer's text 500
            raise MLServerError(
                f"the model failed on this request: {type(exc).__name__}: {str(exc)[:300]}", MODEL_FAILURE_STATUS
            ) from None
