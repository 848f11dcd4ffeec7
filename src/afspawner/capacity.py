"""GPU capacity per class, computed from node and pod objects (pure; fed by the informers).

A unit of a class is free on a node that matches the class's selector, is Ready and
schedulable, when the node's allocatable amount of the class's resource exceeds what
non-terminated pods bound to it request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from afcore.quantity import QuantityError, parse_quantity
from afspawner.facility import GPUClass

TERMINATED = ("Succeeded", "Failed")


@dataclass(frozen=True)
class ClassCapacity:
    gpu_class: str
    total: int
    used: int
    pending: int  # units asked by pods not yet bound to a node

    @property
    def free(self) -> int:
        return max(self.total - self.used, 0)


def _units(value: object) -> int:
    try:
        return int(parse_quantity(value))
    except QuantityError:
        return 0


def _node_usable(node: Mapping[str, Any]) -> bool:
    if (node.get("spec") or {}).get("unschedulable"):
        return False
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _matches(node: Mapping[str, Any], gclass: GPUClass) -> bool:
    labels = (node.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in gclass.selector.items())


def _requested(pod: Mapping[str, Any], resource: str) -> int:
    total = 0
    for c in (pod.get("spec") or {}).get("containers") or []:
        res = c.get("resources") or {}
        asked = (res.get("requests") or {}).get(resource, (res.get("limits") or {}).get(resource))
        total += _units(asked) if asked is not None else 0
    return total


def gpu_capacity(
    gclass: GPUClass, nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]
) -> ClassCapacity:
    """Total, used and pending units of ``gclass`` in the cluster."""
    eligible = {
        n["metadata"]["name"]: _units(
            (n.get("status") or {}).get("allocatable", {}).get(gclass.resource, 0)
        )
        for n in nodes
        if _node_usable(n) and _matches(n, gclass)
    }
    used = pending = 0
    for pod in pods:
        if (pod.get("status") or {}).get("phase") in TERMINATED:
            continue
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        asked = _requested(pod, gclass.resource)
        if not asked:
            continue
        node = (pod.get("spec") or {}).get("nodeName")
        if node is None:
            pending += asked
        elif node in eligible:
            used += asked
    return ClassCapacity(gclass.name, sum(eligible.values()), used, pending)


def _name(obj: Mapping[str, Any]) -> str | None:
    name = (obj.get("metadata") or {}).get("name")
    return None if name is None else str(name)


def _pod_key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


class GPUCounters:
    """:func:`gpu_capacity` of every class, kept as counters fed with informer changes.

    ``node_changed`` and ``pod_changed`` take what an informer emits, ``(kind, obj)`` with kind
    ADDED, MODIFIED, SYNC (all three: the object as it is now) or DELETED. Per node it keeps
    the classes the node is eligible for with their allocatable units; per pod, its node (or
    ``None``: pending) and the units it asks per class; per node, the units its pods ask. So
    one change costs O(number of classes) and a query O(1), however many pods and nodes there
    are. Only names, labels, ``spec.nodeName``/``unschedulable``, ``status.phase``/
    ``conditions``/``allocatable``, ``deletionTimestamp`` and container resources are read.
    """

    def __init__(self, classes: Iterable[GPUClass]) -> None:
        self._classes = tuple(classes)
        self._total = {c.name: 0 for c in self._classes}
        self._used = dict(self._total)
        self._pending = dict(self._total)
        self._nodes: dict[str, dict[str, int]] = {}  # node → eligible class → allocatable
        self._pods: dict[str, tuple[str | None, dict[str, int]]] = {}  # pod → (node, asks)
        self._bound: dict[str, dict[str, int]] = {}  # node → class → units its pods ask

    # -- queries -----------------------------------------------------------------------------
    def capacity(self, gpu_class: str) -> ClassCapacity:
        """What :func:`gpu_capacity` gives for the class over the objects seen so far."""
        return ClassCapacity(
            gpu_class, self._total[gpu_class], self._used[gpu_class], self._pending[gpu_class]
        )

    def available(self, gpu_class: str) -> int:
        """Units neither used by a bound pod nor asked by a pending one."""
        return max(self._total[gpu_class] - self._used[gpu_class] - self._pending[gpu_class], 0)

    # -- changes -----------------------------------------------------------------------------
    def seed(self, nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]) -> None:
        """Count what an informer holds already (when the counters start after it)."""
        for node in nodes:
            self.node_changed("SYNC", node)
        for pod in pods:
            self.pod_changed("SYNC", pod)

    def node_changed(self, kind: str, node: Mapping[str, Any]) -> None:
        name = _name(node)
        if name is None:
            return
        bound = self._bound.get(name, {})
        for cname, units in self._nodes.pop(name, {}).items():
            self._total[cname] -= units
            self._used[cname] -= bound.get(cname, 0)
        if kind == "DELETED" or not _node_usable(node):
            return
        allocatable = (node.get("status") or {}).get("allocatable") or {}
        eligible = {
            c.name: _units(allocatable.get(c.resource, 0))
            for c in self._classes
            if _matches(node, c)
        }
        if eligible:
            self._nodes[name] = eligible
        for cname, units in eligible.items():
            self._total[cname] += units
            self._used[cname] += bound.get(cname, 0)

    def pod_changed(self, kind: str, pod: Mapping[str, Any]) -> None:
        if _name(pod) is None:
            return
        key = _pod_key(pod)
        old = self._pods.pop(key, None)
        if old is not None:
            self._count(*old, -1)
        if kind == "DELETED" or (pod.get("status") or {}).get("phase") in TERMINATED:
            return
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            return
        asks = {c.name: n for c in self._classes if (n := _requested(pod, c.resource))}
        if asks:
            node = (pod.get("spec") or {}).get("nodeName")
            self._pods[key] = (node, asks)
            self._count(node, asks, 1)

    def _count(self, node: str | None, asks: Mapping[str, int], sign: int) -> None:
        if node is None:
            for cname, n in asks.items():
                self._pending[cname] += sign * n
            return
        bound = self._bound.setdefault(node, {})
        eligible = self._nodes.get(node, {})
        for cname, n in asks.items():
            left = bound.get(cname, 0) + sign * n
            if left:
                bound[cname] = left
            else:
                bound.pop(cname, None)
            if cname in eligible:
                self._used[cname] += sign * n
        if not bound:
            del self._bound[node]
