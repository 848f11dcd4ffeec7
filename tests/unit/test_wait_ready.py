"""A launch waits for the pod it created, not for a predecessor of the same name.

The informer's store is fed changes the way its watch feeds them (``Informer.apply``); no
Kubernetes is involved: which object counts is a decision on data."""

from __future__ import annotations

import asyncio
import datetime as dt
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


def _unschedulable(uid: str, since: dt.datetime) -> dict[str, Any]:
    pod = _pod(uid)
    pod["status"]["conditions"] = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    ]
    return pod


def _graced_backend(grace: float) -> tuple[KubernetesBackend, Informer]:
    backend, pods = _backend()
    backend.settings = settings_from_options({"namespace": NS, "unschedulable_grace": grace})
    return backend, pods


async def test_an_unschedulable_pod_fails_at_its_deadline_without_another_change() -> None:
    backend, pods = _graced_backend(4.0)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    pods.apply("ADDED", _unschedulable("new", now - dt.timedelta(seconds=1)))
    waiting = asyncio.create_task(backend._wait_ready(KEY, 20, "new"))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # about 3 s of grace left
    with pytest.raises(LaunchFailed, match="Unschedulable: 0/3 nodes"):
        await asyncio.wait_for(waiting, 10)


async def test_a_pod_that_becomes_unschedulable_while_waited_for_fails_after_the_grace() -> None:
    backend, pods = _graced_backend(2.0)
    waiting = asyncio.create_task(backend._wait_ready(KEY, 20, "new"))
    pods.apply("ADDED", _pod("new"))
    await asyncio.sleep(0.05)
    pods.apply("MODIFIED", _unschedulable("new", dt.datetime.now(dt.UTC)))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    with pytest.raises(LaunchFailed, match="Unschedulable"):
        await asyncio.wait_for(waiting, 10)


async def test_a_pending_pod_is_not_polled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing waits on the clock for a plain pending pod: it is looked at when it changes
    (a storm keeps thousands of spawns waiting for a minute or more)."""
    from afspawner.backends import kubernetes

    looks: list[str] = []

    def counted(pod: Any, now: dt.datetime, grace: float) -> str | None:
        looks.append(pod["metadata"]["uid"])
        return None

    monkeypatch.setattr(kubernetes, "pod_failure", counted)
    backend, pods = _graced_backend(300.0)
    pods.apply("ADDED", _pod("new"))
    waiting = asyncio.create_task(backend._wait_ready(KEY, 10, "new"))
    await asyncio.sleep(2.5)  # the previous code looked again every 2 s
    assert looks == ["new"] and not waiting.done()
    pods.apply("MODIFIED", _pod("new", ready=True))
    pod = await asyncio.wait_for(waiting, 2)
    assert pod["metadata"]["uid"] == "new" and looks == ["new"]
