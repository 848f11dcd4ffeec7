"""What informers keep (pure): every reader answers the same on the slim and the full object."""

from __future__ import annotations

import copy
import datetime as dt
import json
from typing import Any

import pytest

from afspawner.capacity import gpu_capacity
from afspawner.kube.phases import pod_phases
from afspawner.kube.slim import (
    LAST_APPLIED,
    involved_key,
    slim_event,
    slim_node,
    slim_pod,
    without_managed_fields,
)
from afspawner.kube.status import exit_status, pod_failure, pod_ready
from afspawner.loader import load_facility
from afspawner.manifests import PodSettings, make_objects, owned_by, reservation_from_pod, server_of
from afspawner.plan import UserIdentity
from afspawner.policy import SpawnOptions, UserContext, resolve

FAC = load_facility(
    {
        "vos": {"cms": {"namespace": "af-cms"}},
        "gpu_classes": {
            "t4": {"resource": "nvidia.com/gpu", "selector": {"nvidia.com/gpu.product": "T4"}}
        },
        "volumes": {"cvmfs": {"type": "cvmfs", "mount": "/cvmfs"}},
        "flavors": [
            {
                "name": "ml",
                "vos": ["cms"],
                "image": "img:1",
                "cpu": 2,
                "memory": "8Gi",
                "gpu": {"class": "t4", "count": 2},
                "volumes": ["cvmfs"],
                "env": {f"SITE_VAR_{i}": "x" * 40 for i in range(20)},
            }
        ],
    }
)
PLAN = resolve(
    FAC,
    UserContext("olga", frozenset(), ("cms",)),
    SpawnOptions("ml"),
    UserIdentity("olga", 50006, 5063, ()),
    "gpu1",
)
MANAGED: list[dict[str, Any]] = [
    {
        "manager": m,
        "operation": "Update",
        "fieldsType": "FieldsV1",
        "fieldsV1": {f"f:{i}": {f"f:{j}": {} for j in range(8)} for i in range(20)},
    }
    for m in ("hub", "kube-scheduler", "kubelet")
]
STATUSES: list[dict[str, Any]] = [
    {"phase": "Pending"},
    {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/9 nodes are available",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
    },
    {
        "phase": "Running",
        "podIP": "10.0.0.7",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "True",
                "lastTransitionTime": "2026-01-01T00:00:01Z",
            },
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:09Z"},
        ],
        "containerStatuses": [
            {
                "name": "notebook",
                "restartCount": 0,
                "state": {"running": {"startedAt": "2026-01-01T00:00:05Z"}},
            }
        ],
    },
    {
        "phase": "Pending",
        "containerStatuses": [
            {"name": "notebook", "state": {"waiting": {"reason": "ErrImagePull", "message": "no"}}}
        ],
    },
    {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {"exitCode": 3}}}]},
]


def _full_pod(status: dict[str, Any], node: str | None = "gpu-1") -> dict[str, Any]:
    pod = copy.deepcopy(make_objects(PLAN, PodSettings(namespace="af-cms")).pod)
    meta = pod["metadata"]
    meta.update(uid="0b9d-uid", resourceVersion="42", managedFields=copy.deepcopy(MANAGED))
    meta["creationTimestamp"] = "2026-01-01T00:00:00Z"
    meta["annotations"][LAST_APPLIED] = json.dumps(pod)
    if node:
        pod["spec"]["nodeName"] = node
    pod["status"] = status
    return pod


@pytest.mark.parametrize("status", STATUSES)
def test_pod_readers_answer_the_same_on_the_slim_pod(status: dict[str, Any]) -> None:
    full = _full_pod(status)
    slim = slim_pod(copy.deepcopy(full))
    now = dt.datetime(2026, 1, 1, 0, 1, tzinfo=dt.UTC)
    assert pod_ready(slim) == pod_ready(full)
    assert pod_failure(slim, now, 20) == pod_failure(full, now, 20)
    assert exit_status(slim) == exit_status(full)
    assert pod_phases(slim) == pod_phases(full)
    assert reservation_from_pod(slim) == reservation_from_pod(full) is not None
    assert server_of(slim) == server_of(full) == ("olga", "gpu1")
    assert owned_by({"metadata": {}}, slim) == owned_by({"metadata": {}}, full)
    assert slim["metadata"]["labels"] == full["metadata"]["labels"]
    node = slim_node(_node())
    [gclass] = FAC.gpu_classes.values()
    for nodename in ("gpu-1", None):
        f, s = _full_pod(status, nodename), slim_pod(_full_pod(status, nodename))
        assert gpu_capacity(gclass, [node], [s]) == gpu_capacity(gclass, [_node()], [f])


def test_slim_pod_drops_what_nobody_reads() -> None:
    full = _full_pod(STATUSES[2])
    slim = slim_pod(copy.deepcopy(full))
    assert "managedFields" not in slim["metadata"]
    assert LAST_APPLIED not in slim["metadata"]["annotations"]
    assert set(slim["spec"]) == {"nodeName", "containers"}
    assert slim["spec"]["containers"] == [
        {"name": c["name"], "resources": c["resources"]} for c in full["spec"]["containers"]
    ]
    assert len(json.dumps(slim)) * 4 < len(json.dumps(full))
    assert full["metadata"]["managedFields"]  # the input is not changed


def test_slim_pod_keeps_init_containers_resources() -> None:
    full = _full_pod(STATUSES[0])
    full["spec"]["initContainers"] = [{"name": "init", "image": "i", "resources": {"a": 1}}]
    assert slim_pod(full)["spec"]["initContainers"] == [{"name": "init", "resources": {"a": 1}}]


def _node(ready: str = "True", unschedulable: bool = False) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "gpu-1",
            "uid": "n1",
            "labels": {"nvidia.com/gpu.product": "T4"},
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
            "managedFields": copy.deepcopy(MANAGED),
        },
        "spec": {"unschedulable": unschedulable, "podCIDR": "10.0.0.0/24"},
        "status": {
            "allocatable": {"nvidia.com/gpu": "4", "cpu": "32"},
            "capacity": {"nvidia.com/gpu": "4"},
            "conditions": [{"type": "Ready", "status": ready}],
            "images": [{"names": [f"registry/img{i}:1"], "sizeBytes": i} for i in range(50)],
        },
    }


@pytest.mark.parametrize("ready,unschedulable", [("True", False), ("False", False), ("True", True)])
def test_node_capacity_is_the_same_on_the_slim_node(ready: str, unschedulable: bool) -> None:
    [gclass] = FAC.gpu_classes.values()
    pods = [_full_pod(STATUSES[2])]
    full = _node(ready, unschedulable)
    slim = slim_node(copy.deepcopy(full))
    assert gpu_capacity(gclass, [slim], pods) == gpu_capacity(gclass, [full], pods)
    assert "images" not in slim["status"] and "managedFields" not in slim["metadata"]


def test_slim_event_keeps_progress_fields_and_its_key() -> None:
    ev = {
        "metadata": {"name": "p.1", "namespace": "ns", "uid": "e1", "managedFields": MANAGED},
        "involvedObject": {"kind": "Pod", "namespace": "ns", "name": "p", "fieldPath": "x"},
        "reason": "Pulling",
        "message": 'Pulling image "img:1"',
        "type": "Normal",
        "source": {"component": "kubelet"},
        "count": 3,
    }
    slim = slim_event(ev)
    assert slim == {
        "metadata": {"name": "p.1", "namespace": "ns", "uid": "e1"},
        "involvedObject": {"kind": "Pod", "namespace": "ns", "name": "p"},
        "reason": "Pulling",
        "message": 'Pulling image "img:1"',
        "type": "Normal",
    }
    assert involved_key(slim) == involved_key(ev) == "ns/p"
    assert involved_key({"involvedObject": {"name": "node-1"}}) == "node-1"
    assert involved_key({}) is None


def test_default_transform_drops_managed_fields_only() -> None:
    obj = {"metadata": {"name": "c", "managedFields": MANAGED, "annotations": {LAST_APPLIED: "{}"}}}
    assert without_managed_fields(obj) == {"metadata": {"name": "c", "annotations": {}}}
    assert without_managed_fields({"data": 1}) == {"data": 1}
