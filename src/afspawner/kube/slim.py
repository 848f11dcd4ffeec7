"""What the informers keep of each object: only the fields the spawner reads (pure).

A hub that watches thousands of pods holds each one in memory; the apiserver sends far more than
the spawner reads (``managedFields``, the full container specs with the server's environment,
volumes, node image lists). Each function here maps an object as sent to the part that is read,
before the informer stores or emits it. The readers are:

- pods: ``manifests.reservation_from_pod``/``server_of``/``owned_by`` (name, namespace, uid,
  labels, annotations), ``kube/status.py`` (deletionTimestamp, phase, reason, message, podIP,
  conditions, container statuses), ``capacity.py`` (containers' resources, nodeName);
- events: the spawn's progress (involvedObject, uid, reason, message);
- nodes: ``capacity.py`` (labels, unschedulable, taints, allocatable, conditions).

Fields not listed are dropped; a reader that needs a new field adds it here (the unit tests
check that every reader answers the same on the slim object as on the full one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Transform = Callable[[dict[str, Any]], dict[str, Any]]
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
_META = (
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "labels",
    "annotations",
)


def _pick(obj: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: obj[k] for k in keys if k in obj}


def slim_meta(meta: Mapping[str, Any], keys: tuple[str, ...] = _META) -> dict[str, Any]:
    """The metadata fields in ``keys``, without kubectl's last-applied configuration."""
    out = _pick(meta, keys)
    ann = out.get("annotations")
    if isinstance(ann, dict) and LAST_APPLIED in ann:
        out["annotations"] = {k: v for k, v in ann.items() if k != LAST_APPLIED}
    return out


def without_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """Any kind: the object without ``metadata.managedFields`` and the last-applied annotation."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        return obj
    meta = {k: v for k, v in meta.items() if k != "managedFields"}
    ann = meta.get("annotations")
    if isinstance(ann, dict) and LAST_APPLIED in ann:
        meta["annotations"] = {k: v for k, v in ann.items() if k != LAST_APPLIED}
    return {**obj, "metadata": meta}


def _containers(items: object) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        return []
    return [_pick(c, ("name", "resources")) for c in items if isinstance(c, dict)]


def slim_pod(pod: dict[str, Any]) -> dict[str, Any]:
    spec = pod.get("spec") or {}
    out: dict[str, Any] = {
        "metadata": slim_meta(pod.get("metadata") or {}),
        "spec": {
            **_pick(spec, ("nodeName",)),
            "containers": _containers(spec.get("containers")),
        },
        "status": pod.get("status") or {},
    }
    if spec.get("initContainers"):
        out["spec"]["initContainers"] = _containers(spec.get("initContainers"))
    return out


def slim_event(event: dict[str, Any]) -> dict[str, Any]:
    inv = event.get("involvedObject") or {}
    return {
        "metadata": slim_meta(
            event.get("metadata") or {}, ("name", "namespace", "uid", "resourceVersion")
        ),
        "involvedObject": _pick(inv, ("kind", "namespace", "name", "uid")),
        **_pick(event, ("reason", "message", "type")),
    }


def slim_node(node: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": slim_meta(
            node.get("metadata") or {}, ("name", "uid", "resourceVersion", "labels")
        ),
        "spec": _pick(node.get("spec") or {}, ("unschedulable", "taints")),
        "status": _pick(node.get("status") or {}, ("allocatable", "capacity", "conditions")),
    }


def involved_key(event: Mapping[str, Any]) -> str | None:
    """``namespace/name`` of the object an Event is about (how the events informer indexes)."""
    inv = event.get("involvedObject") or {}
    name = inv.get("name")
    if not name:
        return None
    ns = inv.get("namespace")
    return f"{ns}/{name}" if ns else str(name)
