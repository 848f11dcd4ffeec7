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
