"""The model reference: `deploy/overlays/<env>/model.yaml`, the one file a promotion changes.

It is a ConfigMap named `model` whose `data` names the served model immutably: registry name and
version, the content digest of the model directory and its content-addressed storage URI.
kustomize `replacements` copy it into the InferenceService. `version: none` declares a deployment
before any model exists.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import MlopsError
from .fsutil import atomic_write_text

MODEL_FILE_NAME = "model.yaml"
CONFIGMAP_NAME = "model"
NONE = "none"
DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
# data key -> ModelRef field, in the order the file lists them
FIELDS = {"name": "name", "version": "version", "digest": "digest", "storageUri": "storage_uri", "source": "source"}
DEFAULT_HEADER = (
    "# The model this environment serves: an immutable reference (registry version + content digest).\n"
    "# Roll back by reverting this file; `none` declares the deployment before any model exists.\n"
)


class ModelRefError(MlopsError):
    """model.yaml is missing or does not hold a valid model reference."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str  # a registry version number, or "none": declared, no model yet
    digest: str  # sha256:<hex> over the model directory, or "none"
    storage_uri: str  # the content-addressed URI in this environment's store, or "none"
    source: str  # lineage: which registry version produced or validated it, or "none"

    @property
    def is_empty(self) -> bool:
        return self.version == NONE

    @classmethod
    def empty(cls, name: str) -> ModelRef:
        return cls(name=name, version=NONE, digest=NONE, storage_uri=NONE, source=NONE)

    def to_data(self) -> dict[str, str]:
        return {key: getattr(self, attr) for key, attr in FIELDS.items()}

    def check(self, where: str = "model reference") -> ModelRef:
        """Raise ModelRefError unless every field has its expected form; returns self."""
        for key, attr in FIELDS.items():
            value = getattr(self, attr)
            if not isinstance(value, str) or not value.strip() or "\n" in value:
                raise ModelRefError(f"{where}: data.{key} is {value!r}; expected a non-empty single-line string")
        if self.is_empty:
            return self
        if not self.version.isdigit() or int(self.version) < 1:
            raise ModelRefError(
                f"{where}: data.version is {self.version!r}; expected a registry version number or none"
            )
        if not DIGEST_PATTERN.match(self.digest):
            raise ModelRefError(f"{where}: data.digest is {self.digest!r}; expected sha256:<64 hex digits>")
        if self.storage_uri == NONE:
            raise ModelRefError(
                f"{where}: data.storageUri is none but version is {self.version}; expected the model URI"
            )
        return self


def model_ref_path(overlay_dir: Path) -> Path:
    return Path(overlay_dir) / MODEL_FILE_NAME


def read_model_ref(overlay_dir: Path) -> ModelRef:
    """Read and validate an overlay's model.yaml."""
    path = model_ref_path(overlay_dir)
    if not path.is_file():
        raise ModelRefError(f"{path} is missing: every overlay declares its model there (version: none before any)")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ModelRefError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if (
        not isinstance(doc, dict)
        or doc.get("kind") != "ConfigMap"
        or not isinstance(doc.get("metadata"), dict)
        or doc["metadata"].get("name") != CONFIGMAP_NAME
    ):
        raise ModelRefError(f"{path} must be a ConfigMap named {CONFIGMAP_NAME!r}")
    data = doc.get("data")
    if not isinstance(data, dict):
        raise ModelRefError(f"{path}: data is missing; expected {', '.join(FIELDS)}")
    missing = [key for key in FIELDS if key not in data]
    if missing:
        raise ModelRefError(f"{path}: data.{missing[0]} is missing; expected {', '.join(FIELDS)}")
    # A hand-edited `version: 3` parses as an int; it means the same as "3".
    values = {
        attr: str(data[key]) if isinstance(data[key], int) and not isinstance(data[key], bool) else data[key]
        for key, attr in FIELDS.items()
    }
    return ModelRef(**values).check(str(path))


def _scalar(value: str) -> str:
    """Plain when YAML reads it back as the same string, JSON-quoted (valid YAML) otherwise."""
    try:
        plain_ok = yaml.safe_load(value) == value and value == value.strip()
    except yaml.YAMLError:
        plain_ok = False
    return value if plain_ok else json.dumps(value)


def render_model_ref(ref: ModelRef, header: str = DEFAULT_HEADER) -> str:
    lines = [
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        f"  name: {CONFIGMAP_NAME}",
        "data:",
    ]
    lines += [f"  {key}: {_scalar(value)}" for key, value in ref.to_data().items()]
    return header + "\n".join(lines) + "\n"


def _header(text: str) -> str:
    """The leading comment block of a file (kept verbatim when the file is rewritten)."""
    header = []
    for line in text.splitlines(keepends=True):
        if line.startswith("#") or not line.strip():
            header.append(line)
        else:
            break
    return "".join(header)


def write_model_ref(overlay_dir: Path, ref: ModelRef) -> bool:
    """Write the reference atomically, keeping the file's header comments.

    Returns False when the file already holds exactly these bytes (nothing written), so a rerun
    of a promotion step makes no change and no commit.
    """
    path = model_ref_path(overlay_dir)
    if not Path(overlay_dir).is_dir():
        raise ModelRefError(f"overlay folder {overlay_dir} does not exist")
    ref.check(str(path))
    current = path.read_text() if path.is_file() else None
    text = render_model_ref(ref, _header(current) if current is not None else DEFAULT_HEADER)
    if text == current:
        return False
    atomic_write_text(path, text)
    return True
