"""A launch waits for the pod it created, not for a predecessor of the same name.

The informer's store is fed changes the way its watch feeds them (``Informer.apply``); no
Kubernetes is involved: which object counts is a decision on data."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from afspawner.backends.base import LaunchFailed
from afspawner.backends.kubernetes import KubernetesBackend, settings_from_options
from afspawner.kube.informer import Informer, NamespacedInformers
from afspawner.kube.slim import slim_pod
from unit.test_manifests import FAC

NS, NAME = "af", "jupyter-alice"
KEY = f"{NS}/{NAME}"


def _pod(uid: str, *, ready: bool = False, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": NAME, "namespace": NS, "uid": uid, "resourceVersion": "1"}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-02T10:00:00Z"
    status: dict[str, Any] = {"phase": "Running" if ready else "Pending", "podIP": "10.0.0.7"}
    if ready:
        status["conditions"] = [{"type": "Ready", "status": "True"}]
    return {"metadata": meta, "spec": {"containers": []}, "status": status}


def _backend() -> tuple[KubernetesBackend, Informer]:
    backend = KubernetesBackend(FAC, settings_from_options({"namespace": NS}))
    pods = Informer(None, f"/api/v1/namespaces/{NS}/pods", transform=slim_pod)  # type: ignore[arg-type]
    backend.pods = NamespacedInformers({NS: pods})
    return backend, pods


async def test_a_predecessor_being_deleted_does_not_fail_the_new_pod() -> None:
    backend, pods = _backend()
    pods.apply("MODIFIED", _pod("old", deleting=True))  # the watch has not shown it gone yet
    waiting = asyncio.create_task(backend._wait_ready(KEY, 5, "new"))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the old pod's deletion is not this launch's failure
    pods.apply("DELETED", _pod("old", deleting=True))
    pods.apply("ADDED", _pod("new"))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    pods.apply("MODIFIED", _pod("new", ready=True))
    pod = await asyncio.wait_for(waiting, 2)
    assert pod["metadata"]["uid"] == "new"


async def test_the_created_pod_being_deleted_still_fails_the_launch() -> None:
    backend, pods = _backend()
    waiting = asyncio.create_task(backend._wait_ready(KEY, 5, "new"))
    pods.apply("ADDED", _pod("new"))
    pods.apply("MODIFIED", _pod("new", deleting=True))
    with pytest.raises(LaunchFailed, match="being deleted"):
        await asyncio.wait_for(waiting, 2)
