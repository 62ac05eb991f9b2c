"""Validate rendered overlays: the Kubernetes schema of the target version (strict), the
schemas of the custom resources (KServe, Argo CD; vendored in schemas/), the security policy
every environment must meet (DESIGN: restricted pods, read-only root filesystems, limits, no
token automount, default-deny network, images by digest where promoted) and, when asked,
checkov's Kubernetes checks."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import kubernetes_validate

# Kinds whose schema kubernetes-validate does not ship: their CRD schemas are vendored.
CUSTOM_KINDS = {"InferenceService", "ApplicationSet", "Application", "AppProject"}
POD_SPEC_PATHS = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "InferenceService": ("spec", "predictor"),
}
ISVC_COMPONENTS = ("predictor", "transformer", "explainer")
# Environments that run only what was promoted: their images must be immutable references.
DIGEST_ENVIRONMENTS = ("staging", "production")
# The image a release names before anything was released (commit `none`): it runs nothing.
UNRELEASED_TAG = ":unreleased"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
CHECKOV_SKIP = re.compile(r"^checkov\.io/skip\d+$")
CHECKOV_ARGS = ("--skip-download", "--framework", "kubernetes", "--quiet", "--output", "json")


@dataclass(frozen=True)
class Finding:
    overlay: str
    resource: str  # Kind/namespace/name
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.overlay}: {self.resource}: [{self.rule}] {self.message}"


def resource_id(doc: dict) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind')}/{meta.get('namespace', '-')}/{meta.get('name')}"


def _dig(doc: dict, path: Iterable[str]) -> dict | None:
    node = doc
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node if isinstance(node, dict) else None


def schema_findings(overlay: str, docs: list[dict], kubernetes_version: str) -> Iterator[Finding]:
    """Strict OpenAPI validation of every built-in kind against the target version."""
    for doc in docs:
        if doc.get("kind") in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path) or "(root)"
            yield Finding(overlay, resource_id(doc), "schema", f"{where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            yield Finding(
                overlay,
                resource_id(doc),
                "schema",
                f"no schema for {doc.get('apiVersion')} {doc.get('kind')} in Kubernetes {kubernetes_version}",
            )


@cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> JSON schema, from the vendored CRD schemas (scripts/vendor_crd_schemas.py)."""
    found = {}
    for entry in resources.files("mlrail").joinpath("schemas").iterdir():
        if entry.name.endswith(".json"):
            schema = json.loads(entry.read_text())
            props = schema.get("properties") or {}
            if "const" in props.get("apiVersion", {}) and "const" in props.get("kind", {}):
                found[(props["apiVersion"]["const"], props["kind"]["const"])] = schema
    return found


def crd_findings(overlay: str, docs: list[dict]) -> Iterator[Finding]:
    """Custom resources against their CRD's schema, strict: an unknown field (which the API
    server would prune silently) is a finding."""
    import jsonschema

    schemas = crd_schemas()
    for doc in docs:
        if doc.get("kind") not in CUSTOM_KINDS:
            continue
        schema = schemas.get((doc.get("apiVersion"), doc.get("kind")))
        if schema is None:
            known = ", ".join(sorted(f"{a} {k}" for a, k in schemas if k == doc.get("kind"))) or "none"
            yield Finding(
                overlay,
                resource_id(doc),
                "crd-schema",
                f"no vendored schema for {doc.get('apiVersion')} {doc.get('kind')} (vendored: {known})",
            )
            continue
        validator = jsonschema.Draft202012Validator(schema)
        for error in sorted(validator.iter_errors(doc), key=lambda e: [str(p) for p in e.absolute_path]):
            where = ".".join(str(p) for p in error.absolute_path) or "(root)"
            yield Finding(overlay, resource_id(doc), "crd-schema", f"{where}: {error.message}")


def _containers(pod: dict, kind: str) -> list[tuple[str, dict]]:
    found = []
    if kind == "InferenceService" and isinstance(pod.get("model"), dict):
        # KServe builds the pod from the predictor: `model` is the main container.
        found.append(("model", pod["model"]))
    found += [(c.get("name", "?"), c) for key in ("initContainers", "containers") for c in pod.get(key) or []]
    return found


def container_findings(container: dict, pod_security_context: dict | None = None) -> list[tuple[str, str]]:
    """(rule, message) for one container against Pod Security "restricted" plus our additions
    (read-only root filesystem, resources); `pod_security_context` supplies the pod defaults."""
    pod_sc = pod_security_context or {}
    sc = container.get("securityContext") or {}
    found = []
    if sc.get("allowPrivilegeEscalation") is not False:
        found.append(("restricted", "allowPrivilegeEscalation must be false"))
    if sc.get("privileged"):
        found.append(("restricted", "privileged must not be true"))
    if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
        found.append(("restricted", "capabilities.drop must include ALL"))
    if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
        found.append(("restricted", "runAsNonRoot must be true (pod or container)"))
    if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
        found.append(("restricted", "runAsUser must not be 0"))
    seccomp = (sc.get("seccompProfile") or {}).get("type") or (pod_sc.get("seccompProfile") or {}).get("type")
    if seccomp not in ("RuntimeDefault", "Localhost"):
        found.append(("restricted", "seccompProfile.type must be RuntimeDefault or Localhost"))
    if sc.get("readOnlyRootFilesystem") is not True:
        found.append(
            ("read-only-root", "securityContext.readOnlyRootFilesystem must be true (mount an emptyDir to write)")
        )
    resources_ = container.get("resources") or {}
    for section in ("requests", "limits"):
        missing = [r for r in ("cpu", "memory") if r not in (resources_.get(section) or {})]
        if missing:
            found.append(("resources", f"resources.{section} lacks {', '.join(missing)}"))
    return found


def _released(docs: list[dict]) -> bool:
    """Whether the overlay's release names a released commit (release.yaml, ConfigMap `release`)."""
    for doc in docs:
        if doc.get("kind") == "ConfigMap" and (doc.get("metadata") or {}).get("name") == "release":
            return str((doc.get("data") or {}).get("commit", "none")) != "none"
    return False


def _image_finding(image: str, overlay: str, released: bool) -> str | None:
    if overlay in DIGEST_ENVIRONMENTS:
        if DIGEST.search(image):
            return None
        if not released and image.endswith(UNRELEASED_TAG):
            return None  # the declared placeholder: nothing was released here yet
        return f"image {image!r} must be referenced by digest (name@sha256:<64 hex>) in {overlay}"
    if DIGEST.search(image):
        return None
    tail = image.rsplit("/", 1)[-1]
    if ":" in tail and not tail.endswith(":latest"):
        return None
    return f"image {image!r} needs a tag other than latest, or a digest"


def _pod_findings(overlay: str, rid: str, kind: str, pod: dict, released: bool) -> Iterator[Finding]:
    pod_sc = pod.get("securityContext") or {}
    if pod.get("automountServiceAccountToken") is not False:
        yield Finding(overlay, rid, "token-automount", "set automountServiceAccountToken: false on the pod")
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            yield Finding(overlay, rid, "host-namespace", f"{host} must not be true")
    for name, container in _containers(pod, kind):
        for rule, message in container_findings(container, pod_sc):
            yield Finding(overlay, rid, rule, f"container {name}: {message}")
        image = container.get("image")
        if image is not None:
            problem = _image_finding(str(image), overlay, released)
            if problem:
                yield Finding(overlay, rid, "image", f"container {name}: {problem}")


def _skip_findings(overlay: str, doc: dict) -> Iterator[Finding]:
    """Every checkov exception carries its reason beside the resource: CKV_ID=reason."""
    for key, value in ((doc.get("metadata") or {}).get("annotations") or {}).items():
        if CHECKOV_SKIP.match(key) and not re.fullmatch(r"CKV\w*_\d+\s*=\s*\S.*", str(value), re.DOTALL):
            yield Finding(
                overlay, resource_id(doc), "exception", f"annotation {key}: expected CKV_<ID>=<reason>, got {value!r}"
            )


def policy_findings(overlay: str, docs: list[dict]) -> Iterator[Finding]:
    """The security policy; each finding names the resource and the fix."""
    kinds: dict[str, list[dict]] = {}
    released = _released(docs)
    for doc in docs:
        kinds.setdefault(doc.get("kind"), []).append(doc)
        rid, kind = resource_id(doc), doc.get("kind")
        yield from _skip_findings(overlay, doc)
        if kind == "ServiceAccount" and doc.get("automountServiceAccountToken") is not False:
            yield Finding(overlay, rid, "token-automount", "set automountServiceAccountToken: false")
        if kind == "Namespace":
            labels = (doc.get("metadata") or {}).get("labels") or {}
            if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
                yield Finding(
                    overlay, rid, "pod-security", "label pod-security.kubernetes.io/enforce must be restricted"
                )
        if kind in POD_SPEC_PATHS:
            components = ISVC_COMPONENTS if kind == "InferenceService" else (None,)
            for component in components:
                path = ("spec", component) if component else POD_SPEC_PATHS[kind]
                pod = _dig(doc, path)
                if pod is not None:
                    yield from _pod_findings(overlay, rid, kind, pod, released)
    if not kinds.get("Namespace"):
        yield Finding(overlay, "-", "pod-security", "the overlay declares no Namespace")
    if not any(_is_default_deny(p) for p in kinds.get("NetworkPolicy", [])):
        yield Finding(
            overlay,
            "-",
            "network",
            "no default-deny NetworkPolicy (podSelector {} with Ingress and Egress and no rules)",
        )


def _is_default_deny(policy: dict) -> bool:
    spec = policy.get("spec") or {}
    return (
        not (spec.get("podSelector") or {})
        and {"Ingress", "Egress"} <= set(spec.get("policyTypes") or [])
        and not spec.get("ingress")
        and not spec.get("egress")
    )


def validate_overlay(overlay: str, docs: list[dict], kubernetes_version: str) -> list[Finding]:
    """Strict schema, CRD schemas and policy of one rendered overlay (its name is the environment)."""
    return [
        *schema_findings(overlay, docs, kubernetes_version),
        *crd_findings(overlay, docs),
        *policy_findings(overlay, docs),
    ]


def checkov_command() -> list[str] | None:
    """checkov next to this interpreter, else on PATH; None when it is not installed."""
    beside = Path(sys.executable).with_name("checkov")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("checkov")
    return [found] if found else None


def checkov_findings(rendered: Mapping[str, str], command: Sequence[str], timeout_s: float = 300) -> list[Finding]:
    """checkov's Kubernetes checks over rendered overlays (overlay name -> YAML text). A check
    is excepted only by a `checkov.io/skipN: CKV_ID=reason` annotation on the resource."""
    with tempfile.TemporaryDirectory(prefix="mlrail-checkov-") as tmp:
        for name, text in rendered.items():
            (Path(tmp) / f"{name}.yaml").write_text(text)
        try:
            result = subprocess.run(
                [*command, *CHECKOV_ARGS, "--directory", tmp],
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return [Finding("-", "-", "checkov", f"checkov did not finish within {timeout_s:.0f} s")]
    # checkov exits 1 when a check failed; anything it cannot parse is an error of its own.
    try:
        report = json.loads(result.stdout) if result.stdout.strip() else {}
    except json.JSONDecodeError:
        report = None
    if result.returncode not in (0, 1) or report is None:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        return [Finding("-", "-", "checkov", f"checkov failed (exit {result.returncode}): {detail[0]}")]
    reports = report if isinstance(report, list) else [report]
    findings = []
    for one in reports:
        for check in (one.get("results") or {}).get("failed_checks") or []:
            overlay = Path(check.get("file_path", "-")).stem
            findings.append(
                Finding(overlay, check.get("resource", "-"), check["check_id"], check.get("check_name", ""))
            )
    return sorted(findings, key=str)
