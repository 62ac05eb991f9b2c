"""The release: `deploy/overlays/<env>/release.yaml`, the unit of promotion, one file per environment.

A release records what an environment runs, code and model together: the commit, the project
image by digest, the source digest of the package, the compiled pipelines' content hash and their
parameters, the data snapshot, the model (registry name, version, content digest, storage URI and
where it came from), its metrics and the gate verdict. It is a ConfigMap named `release` (kept in
the cluster for traceability); kustomize `replacements` copy the image into the workloads that run
project code and the storage URI and model annotations into the InferenceService.

`version: none` declares a deployment before any model exists; `image: <name>:unreleased` one
before any code was released. This module is the only parser of the file (working tree or git
history); every flow reads and writes releases through it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .errors import MlopsError
from .fsutil import atomic_write_text

RELEASE_FILE = "release.yaml"
CONFIGMAP_NAME = "release"
NONE = "none"
UNRELEASED_TAG = "unreleased"  # the image of an environment no flow has released code to yet
GATES = ("passed", "failed", NONE)
DIGEST_PATTERN = re.compile(r"^sha256:[0-9a-f]{64}$")
IMAGE_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$")
# Local stores are committed relative to the local root (.mlops/), never as a machine path.
LOCAL_SCHEME = "mlops://"
# data key -> (Release attribute or model attribute), in the order the file lists them
RELEASE_KEYS = {
    "commit": "commit",
    "image": "image",
    "sourceDigest": "source_digest",
    "pipeline": "pipeline",
    "parameters": "parameters",
    "dataSnapshot": "data_snapshot",
}
MODEL_KEYS = {
    "modelName": "name",
    "modelVersion": "version",
    "modelDigest": "digest",
    "storageUri": "storage_uri",
    "modelSource": "source",
}
VERDICT_KEYS = {"metrics": "metrics", "gates": "gates"}
ALL_KEYS = (*RELEASE_KEYS, *MODEL_KEYS, *VERDICT_KEYS)
JSON_KEYS = ("parameters", "metrics")
DEFAULT_HEADER = """\
# The release of this environment: what it runs, code and model together. Written by the flows
# and by promotion PRs; review it like code. Rollback is a revert PR of this file.
#   commit, image          the commit released and the project image by digest (locally the
#                          source digest stands in for the image: there is no image to build)
#   sourceDigest           sha256 over the package source at that commit (src/, pyproject.toml,
#                          Dockerfile, from git objects)
#   pipeline, parameters   the compiled pipelines' content hash and the parameters they run with
#   dataSnapshot           the content hash of the features the model was trained on
#   model*, storageUri     the model served: registry name and version, content digest, where it
#                          is stored and which registry version produced or validated it
#   metrics, gates         its evaluation and the gate verdict
# `modelVersion: none` declares the deployment before any model exists; an `:unreleased` image
# one before any code was released. kustomize copies the image into the feature job and the
# storage URI and model fields into the InferenceService (kustomization.yaml, replacements).
"""


class ReleaseError(MlopsError):
    """release.yaml is missing or does not hold a valid release; the message names file and field."""


@dataclass(frozen=True)
class ModelRef:
    """The model part of a release: an immutable reference (registry version + content digest)."""

    name: str
    version: str = NONE  # a registry version number, or "none": declared, no model yet
    digest: str = NONE  # sha256:<hex> over the model directory, or "none"
    storage_uri: str = NONE  # content-addressed URI in this environment's store (mlops://... locally)
    source: str = NONE  # <env>:<name>/<version> that produced or validated it, or "none"

    @property
    def is_empty(self) -> bool:
        return self.version == NONE

    @classmethod
    def empty(cls, name: str) -> ModelRef:
        return cls(name=name)

    def to_data(self) -> dict[str, str]:
        return {key: getattr(self, attr) for key, attr in MODEL_KEYS.items()}

    def check(self, where: str = "release") -> ModelRef:
        for key, attr in MODEL_KEYS.items():
            _single_line(getattr(self, attr), where, key)
        if self.is_empty:
            return self
        if not self.version.isdigit() or int(self.version) < 1:
            raise ReleaseError(
                f"{where}: data.modelVersion is {self.version!r}; expected a registry version number or none"
            )
        if not DIGEST_PATTERN.match(self.digest):
            raise ReleaseError(f"{where}: data.modelDigest is {self.digest!r}; expected sha256:<64 hex digits>")
        if self.storage_uri == NONE:
            raise ReleaseError(
                f"{where}: data.storageUri is none but modelVersion is {self.version}; expected the model's URI"
            )
        if self.storage_uri.startswith(("file:", "/")):
            raise ReleaseError(
                f"{where}: data.storageUri is {self.storage_uri!r}, a path of one machine; expected "
                f"{LOCAL_SCHEME}<path under the local root> or an object-store URI (s3://, gs://)"
            )
        if self.source != NONE:
            parse_source(self.source, f"{where}: data.modelSource")
        return self


@dataclass(frozen=True)
class Release:
    model: ModelRef
    commit: str = NONE
    image: str = NONE  # <image>@sha256:<hex>, or <image>:unreleased
    source_digest: str = NONE
    pipeline: str = NONE  # the combined content hash of the compiled pipelines
    parameters: dict[str, dict[str, Any]] = field(default_factory=dict)  # pipeline -> name -> value
    data_snapshot: str = NONE
    metrics: dict[str, float] = field(default_factory=dict)
    gates: str = NONE  # passed | failed | none

    @classmethod
    def unreleased(cls, model_name: str, image: str) -> Release:
        """The release of an environment nothing was released to yet."""
        return cls(model=ModelRef.empty(model_name), image=f"{image}:{UNRELEASED_TAG}")

    @property
    def has_pipeline(self) -> bool:
        return self.pipeline != NONE

    @property
    def image_digest(self) -> str | None:
        """sha256:<hex> of the image, None for an unreleased one."""
        return self.image.rpartition("@")[2] if "@" in self.image else None

    def with_model(self, model: ModelRef, metrics: dict[str, float] | None = None, gates: str | None = None) -> Release:
        return replace(
            self, model=model, metrics=self.metrics if metrics is None else metrics, gates=gates or self.gates
        )

    def to_data(self) -> dict[str, str]:
        data: dict[str, str] = {}
        for key, attr in RELEASE_KEYS.items():
            value = getattr(self, attr)
            data[key] = _json(value) if key in JSON_KEYS else value
        data.update(self.model.to_data())
        data["metrics"] = _json(self.metrics)
        data["gates"] = self.gates
        return data

    def check(self, where: str = "release") -> Release:
        """Raise ReleaseError unless every field has its expected form; returns self."""
        for key in ("commit", "image", "sourceDigest", "pipeline", "dataSnapshot", "gates"):
            attr = RELEASE_KEYS.get(key, key)
            _single_line(getattr(self, attr), where, key)
        if not (IMAGE_PATTERN.match(self.image) or self.image.endswith(f":{UNRELEASED_TAG}")):
            raise ReleaseError(
                f"{where}: data.image is {self.image!r}; expected <image>@sha256:<64 hex digits> "
                f"(or <image>:{UNRELEASED_TAG} before any release)"
            )
        for key, attr in (
            ("sourceDigest", "source_digest"),
            ("pipeline", "pipeline"),
            ("dataSnapshot", "data_snapshot"),
        ):
            value = getattr(self, attr)
            if value != NONE and not DIGEST_PATTERN.match(value):
                raise ReleaseError(f"{where}: data.{key} is {value!r}; expected sha256:<64 hex digits> or none")
        if self.gates not in GATES:
            raise ReleaseError(f"{where}: data.gates is {self.gates!r}; expected one of {', '.join(GATES)}")
        if not isinstance(self.parameters, dict) or not all(isinstance(v, dict) for v in self.parameters.values()):
            raise ReleaseError(f"{where}: data.parameters must be a JSON object of pipeline -> {{name: value}}")
        if not isinstance(self.metrics, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.metrics.values()
        ):
            raise ReleaseError(f"{where}: data.metrics must be a JSON object of metric name -> number")
        self.model.check(where)
        return self


def _single_line(value: Any, where: str, key: str) -> None:
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise ReleaseError(f"{where}: data.{key} is {value!r}; expected a non-empty single-line string")


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# --- sources ---------------------------------------------------------------------------------


def source_of(env: str, name: str, version: str) -> str:
    """The `modelSource` field: the registry version that produced or validated the model."""
    return f"{env}:{name}/{version}"


def parse_source(source: str, where: str = "modelSource") -> tuple[str, str, str]:
    """(env, name, version) of a `modelSource` field written by source_of."""
    env, _, rest = source.partition(":")
    name, _, version = rest.rpartition("/")
    if not env or not name or not version.isdigit():
        raise ReleaseError(f"{where} is {source!r}; expected the form <env>:<model name>/<version>")
    return env, name, version


# --- storage URIs ----------------------------------------------------------------------------


def portable_uri(uri: str, local_root: Path) -> str:
    """The URI as committed: a local store's file:// URI becomes mlops://<path under the local root>."""
    from .artifacts import file_uri_path

    path = file_uri_path(uri)
    if path is None:
        return uri  # an object store: the URI is the same on every machine
    root = Path(local_root).resolve()
    try:
        relative = Path(path).resolve().relative_to(root)
    except ValueError:
        raise ReleaseError(
            f"model URI {uri} is outside the local root {root}: a release commits local stores relative to it"
        ) from None
    return LOCAL_SCHEME + relative.as_posix()


def resolve_uri(uri: str, local_root: Path) -> str:
    """The URI a store reads: mlops://<relative> becomes file:// under this machine's local root."""
    if not uri.startswith(LOCAL_SCHEME):
        return uri
    relative = uri[len(LOCAL_SCHEME) :]
    if not relative or relative.startswith("/") or ".." in Path(relative).parts:
        raise ReleaseError(f"storage URI {uri!r} must name a path under the local root: {LOCAL_SCHEME}<env>/...")
    return (Path(local_root).resolve() / relative).as_uri()


# --- reading ---------------------------------------------------------------------------------


def release_path(overlay_dir: Path | str) -> Path:
    return Path(overlay_dir) / RELEASE_FILE


def release_from_text(text: str, where: str) -> Release:
    """Parse the content of a release.yaml (working tree or git history) and check it."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise ReleaseError(f"{where} is not valid YAML{line}: {str(exc).splitlines()[0]}") from None
    if (
        not isinstance(doc, dict)
        or doc.get("kind") != "ConfigMap"
        or not isinstance(doc.get("metadata"), dict)
        or doc["metadata"].get("name") != CONFIGMAP_NAME
    ):
        raise ReleaseError(f"{where} must be a ConfigMap named {CONFIGMAP_NAME!r}")
    data = doc.get("data")
    if not isinstance(data, dict):
        raise ReleaseError(f"{where}: data is missing; expected {', '.join(ALL_KEYS)}")
    missing = [key for key in ALL_KEYS if key not in data]
    if missing:
        raise ReleaseError(f"{where}: data.{missing[0]} is missing; expected {', '.join(ALL_KEYS)}")
    unknown = sorted(set(data) - set(ALL_KEYS), key=str)
    if unknown:
        raise ReleaseError(f"{where}: data.{unknown[0]} is not a release field; expected {', '.join(ALL_KEYS)}")
    values = {key: _text(data[key]) for key in ALL_KEYS}
    parsed: dict[str, Any] = {}
    for key in JSON_KEYS:
        try:
            parsed[key] = json.loads(values[key])
        except ValueError:
            raise ReleaseError(f"{where}: data.{key} is {values[key]!r}; expected a JSON object") from None
    release = Release(
        model=ModelRef(**{attr: values[key] for key, attr in MODEL_KEYS.items()}),
        commit=values["commit"],
        image=values["image"],
        source_digest=values["sourceDigest"],
        pipeline=values["pipeline"],
        parameters=parsed["parameters"],
        data_snapshot=values["dataSnapshot"],
        metrics=parsed["metrics"],
        gates=values["gates"],
    )
    return release.check(where)


def _text(value: Any) -> Any:
    # A hand-edited `modelVersion: 3` parses as an int; it means the same as "3".
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def read_release(overlay_dir: Path | str) -> Release:
    """Read and validate an overlay's release.yaml from the working tree."""
    path = release_path(overlay_dir)
    if not path.is_file():
        raise ReleaseError(
            f"{path} is missing: every overlay declares its release there (modelVersion: none before any)"
        )
    return release_from_text(path.read_text(), str(path))


# --- writing ---------------------------------------------------------------------------------


def _scalar(value: str) -> str:
    """Plain when YAML reads it back as the same string, JSON-quoted (valid YAML) otherwise."""
    try:
        plain_ok = yaml.safe_load(value) == value and value == value.strip()
    except yaml.YAMLError:
        plain_ok = False
    return value if plain_ok else json.dumps(value)


def render_release(release: Release, header: str = DEFAULT_HEADER) -> str:
    release.check()
    lines = ["apiVersion: v1", "kind: ConfigMap", "metadata:", f"  name: {CONFIGMAP_NAME}", "data:"]
    lines += [f"  {key}: {_scalar(value)}" for key, value in release.to_data().items()]
    return header + "\n".join(lines) + "\n"


def header_of(text: str | None) -> str:
    """The leading comment block of a file (kept verbatim when the file is rewritten)."""
    if not text:
        return DEFAULT_HEADER
    header = []
    for line in text.splitlines(keepends=True):
        if line.startswith("#") or not line.strip():
            header.append(line)
        else:
            break
    return "".join(header) or DEFAULT_HEADER


def render_like(release: Release, current: str | None) -> str:
    """release.yaml text for `release`, keeping the header comments of `current` (the file it replaces)."""
    return render_release(release, header_of(current))


def write_release(overlay_dir: Path | str, release: Release) -> bool:
    """Write the release atomically, keeping the file's header comments.

    Returns False when the file already holds exactly these bytes (nothing written), so a rerun
    of a flow step makes no change and no commit.
    """
    path = release_path(overlay_dir)
    if not Path(overlay_dir).is_dir():
        raise ReleaseError(f"overlay folder {overlay_dir} does not exist")
    release.check(str(path))
    current = path.read_text() if path.is_file() else None
    text = render_like(release, current)
    if text == current:
        return False
    atomic_write_text(path, text)
    return True
