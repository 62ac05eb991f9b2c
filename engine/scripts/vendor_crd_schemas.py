"""Vendor the JSON schemas of the custom resources the team's overlays use (KServe's
InferenceService, Argo CD's Application, ApplicationSet and AppProject) into
src/mlrail/schemas/, from the CRDs of a released KServe and Argo CD.

Run from engine/: python scripts/vendor_crd_schemas.py <kserve checkout> <argo-cd checkout>
Each checkout is a git directory (bare or not); the CRDs are read at the tags below.

The conversion is what kubeconform's openapi2jsonschema does in strict mode: descriptions
dropped (size), `additionalProperties: false` wherever a schema lists properties and does not
preserve unknown fields (the API server would prune an unknown field silently: a typo in a
manifest would be lost, so it is a finding), int-or-string as integer or string.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import yaml

KSERVE_TAG = "v0.20.0"
ARGOCD_TAG = "v3.5.1"
SOURCES = [
    (KSERVE_TAG, "config/crd/full/serving.kserve.io_inferenceservices.yaml", 0),
    (ARGOCD_TAG, "manifests/crds/application-crd.yaml", 1),
    (ARGOCD_TAG, "manifests/crds/applicationset-crd.yaml", 1),
    (ARGOCD_TAG, "manifests/crds/appproject-crd.yaml", 1),
]
OUT = Path(__file__).resolve().parents[1] / "src" / "mlrail" / "schemas"
DROP = {
    "description",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-validations",
    "x-kubernetes-embedded-resource",
}


# Keywords whose value maps names to schemas (the names are data, never keywords).
NAMED = {"properties", "patternProperties", "definitions", "$defs"}


def strict(node: object) -> object:
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in DROP:
            continue
        out[key] = {name: strict(sub) for name, sub in value.items()} if key in NAMED else strict(value)
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["type"] = ["integer", "string"]
    if "properties" in out and not preserve and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def shared(schema: dict, min_size: int = 1000) -> dict:
    """Move every subschema that occurs more than once (KServe repeats the container and pod
    schemas per framework and component) into $defs, referenced by its content hash."""
    counts: dict[str, int] = {}

    def children(node: dict) -> list[object]:
        found = []
        for key, value in node.items():
            found += list(value.values()) if key in NAMED and isinstance(value, dict) else [value]
        return found

    def count(node: object) -> None:
        if isinstance(node, list):
            for item in node:
                count(item)
        elif isinstance(node, dict):
            text = json.dumps(node, sort_keys=True)
            if len(text) >= min_size:
                counts[text] = counts.get(text, 0) + 1
            for child in children(node):
                count(child)

    count(schema)
    defs: dict[str, object] = {}

    def replace(node: object, top: bool = False) -> object:
        if isinstance(node, list):
            return [replace(item) for item in node]
        if not isinstance(node, dict):
            return node
        text = json.dumps(node, sort_keys=True)
        if not top and counts.get(text, 0) > 1:
            key = hashlib.sha256(text.encode()).hexdigest()[:12]
            if key not in defs:
                defs[key] = None  # reserved before recursing
                defs[key] = expand(node)
            return {"$ref": f"#/$defs/{key}"}
        return expand(node)

    def expand(node: dict) -> dict:
        return {
            key: {name: replace(sub) for name, sub in value.items()}
            if key in NAMED and isinstance(value, dict)
            else replace(value)
            for key, value in node.items()
        }

    out = replace(schema, top=True)
    if defs:
        out["$defs"] = defs
    return out


def kind_schema(crd: dict, version: str) -> dict:
    names = crd["spec"]["names"]
    group = crd["spec"]["group"]
    schema = strict(next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"])
    # apiVersion and kind must be exactly this resource's; metadata is checked by the API server.
    schema["properties"]["apiVersion"] = {"const": f"{group}/{version}"}
    schema["properties"]["kind"] = {"const": names["kind"]}
    schema["properties"]["metadata"] = {"type": "object"}
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    return shared(schema)


def main(kserve: str, argocd: str) -> int:
    checkouts = [kserve, argocd]
    for tag, path, which in SOURCES:
        commit = subprocess.run(
            ["git", "-C", checkouts[which], "rev-parse", f"{tag}^{{commit}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        text = subprocess.run(
            ["git", "-C", checkouts[which], "show", f"{commit}:{path}"], capture_output=True, text=True, check=True
        ).stdout
        crd = yaml.safe_load(text)
        for version in crd["spec"]["versions"]:
            if not version.get("served"):
                continue
            name = f"{crd['spec']['names']['kind'].lower()}-{crd['spec']['group']}-{version['name']}.json"
            schema = kind_schema(crd, version["name"])
            schema = {"$comment": f"from {path} at {tag} ({commit}) by scripts/vendor_crd_schemas.py", **schema}
            (OUT / name).write_text(json.dumps(schema, separators=(",", ":"), sort_keys=True) + "\n")
            print(f"{name}: {(OUT / name).stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
