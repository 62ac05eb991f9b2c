"""Validate rendered overlays: the Kubernetes schema of the target version (strict) and the
security policy every environment must meet (DESIGN: restricted pods, limits, no token
automount, default-deny network)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import kubernetes_validate

# Kinds whose schema kubernetes-validate does not ship (CRDs); the policy below covers them.
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


def _containers(pod: dict, kind: str) -> list[tuple[str, dict]]:
    if kind == "InferenceService":
        # KServe builds the pod from the predictor: `model` is the main container.
        found = [("model", pod["model"])] if isinstance(pod.get("model"), dict) else []
        found += [(c.get("name", "?"), c) for c in pod.get("containers", [])]
        return found
    return [(c.get("name", "?"), c) for key in ("initContainers", "containers") for c in pod.get(key) or []]


def _pod_findings(overlay: str, rid: str, kind: str, pod: dict) -> Iterator[Finding]:
    def finding(rule: str, message: str) -> Finding:
        return Finding(overlay, rid, rule, message)

    pod_sc = pod.get("securityContext") or {}
    if pod.get("automountServiceAccountToken") is not False:
        yield finding("token-automount", "set automountServiceAccountToken: false on the pod")
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            yield finding("host-namespace", f"{host} must not be true")
    pod_seccomp = (pod_sc.get("seccompProfile") or {}).get("type")
    for name, container in _containers(pod, kind):
        sc = container.get("securityContext") or {}
        where = f"container {name}"
        if sc.get("allowPrivilegeEscalation") is not False:
            yield finding("restricted", f"{where}: allowPrivilegeEscalation must be false")
        if sc.get("privileged"):
            yield finding("restricted", f"{where}: privileged must not be true")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            yield finding("restricted", f"{where}: capabilities.drop must include ALL")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            yield finding("restricted", f"{where}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            yield finding("restricted", f"{where}: runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            yield finding("restricted", f"{where}: seccompProfile.type must be RuntimeDefault or Localhost")
        resources = container.get("resources") or {}
        for section in ("requests", "limits"):
            missing = [r for r in ("cpu", "memory") if r not in (resources.get(section) or {})]
            if missing:
                yield finding("resources", f"{where}: resources.{section} lacks {', '.join(missing)}")
        image = container.get("image")
        if image is not None and not _pinned(image):
            yield finding("image", f"{where}: image {image!r} needs a tag other than latest, or a digest")


def _pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    tail = image.rsplit("/", 1)[-1]
    return ":" in tail and not tail.endswith(":latest")


def policy_findings(overlay: str, docs: list[dict]) -> Iterator[Finding]:
    """The security policy; each finding names the resource and the fix."""
    kinds = {}
    for doc in docs:
        kinds.setdefault(doc.get("kind"), []).append(doc)
        rid, kind = resource_id(doc), doc.get("kind")
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
                    yield from _pod_findings(overlay, rid, kind, pod)
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
    return [*schema_findings(overlay, docs, kubernetes_version), *policy_findings(overlay, docs)]
