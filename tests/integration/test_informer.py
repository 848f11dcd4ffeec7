"""The shared informer against the real apiserver: expired resourceVersions, outages, dispatch
by key to many concurrent waiters, slim objects, and informers scoped to the facility's
namespaces."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from typing import Any

import pytest
from kubernetes_asyncio import client

from afspawner.backends.kube_settings import KubeSettings
from afspawner.backends.kubernetes import KubernetesBackend
from afspawner.kube.informer import Informer, object_key
from afspawner.kube.lifetime import close_shared
from afspawner.kube.slim import involved_key, slim_event, slim_pod
from afspawner.kube.status import pod_ready
from afspawner.loader import load_facility
from afspawner.manifests import selector_labels
from afspawner.names import pod_name
from integration.spawnkit import facility, kube_http, new_namespace
from testbed.k8s import KubeCluster

pytestmark = pytest.mark.k8s


@pytest.fixture
def api(k8s_api: client.ApiClient) -> client.ApiClient:
    return k8s_api


def _configmap(name: str) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}}


async def _create(cluster: KubeCluster, ns: str, name: str) -> None:
    async with kube_http(cluster) as k:
        r = await k.post(f"/api/v1/namespaces/{ns}/configmaps", json=_configmap(name))
        assert r.status_code == 201, r.text


async def _seen(informer: Informer, key: str) -> None:
    async with asyncio.timeout(30):
        await informer.wait_key(key, lambda obj: obj is not None)


async def test_informer_follows_changes_across_watch_timeouts(
    api: client.ApiClient, k8s_cluster: KubeCluster
) -> None:
    ns = await new_namespace(k8s_cluster)
    informer = Informer(api, f"/api/v1/namespaces/{ns}/configmaps", watch_seconds=1)
    informer.start()
    try:
        await informer.wait_synced()
        await _create(k8s_cluster, ns, "first")
        await _seen(informer, f"{ns}/first")
        await asyncio.sleep(2.5)  # the apiserver ended at least two watches meanwhile
        await _create(k8s_cluster, ns, "second")
        await _seen(informer, f"{ns}/second")
        assert informer.lists == 1  # resumed from its resourceVersion, no re-LIST
        assert informer.running
    finally:
        await informer.stop()


async def test_informer_survives_an_apiserver_restart(
    api: client.ApiClient, k8s_cluster: KubeCluster
) -> None:
    ns = await new_namespace(k8s_cluster)
    informer = Informer(api, f"/api/v1/namespaces/{ns}/configmaps")
    informer.start()
    try:
        await informer.wait_synced()
        await asyncio.to_thread(k8s_cluster.restart_apiserver)
        await _create(k8s_cluster, ns, "after-restart")
        await _seen(informer, f"{ns}/after-restart")
        assert informer.running
        assert informer.last_error is not None  # it did see the outage, and recovered
    finally:
        await informer.stop()


def _pod(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": "informer-test"}},
        "spec": {
            "containers": [
                {
                    "name": "c",
                    "image": "busybox:1",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                }
            ]
        },
    }


async def test_each_of_many_waiters_gets_only_its_own_pods_changes(
    api: client.ApiClient, k8s_cluster: KubeCluster
) -> None:
    """50 pods start at once: each keyed listener and waiter hears of its own pod only."""
    ns = await new_namespace(k8s_cluster)
    pods = Informer(api, f"/api/v1/namespaces/{ns}/pods", transform=slim_pod)
    events = Informer(
        api,
        f"/api/v1/namespaces/{ns}/events",
        field_selector="involvedObject.kind=Pod",
        index=involved_key,
        transform=slim_event,
        keep=False,  # as the backend's: dispatched, never stored
    )
    keys = [f"{ns}/p{i}" for i in range(50)]
    heard: dict[str, list[str]] = {k: [] for k in keys}  # object keys each listener got
    told: dict[str, list[str]] = {k: [] for k in keys}  # involved keys of each one's events
    changes: Counter[str] = Counter()  # every change of every pod (broadcast)
    checks: Counter[str] = Counter()  # predicate calls per waiter

    def hear(key: str) -> Any:
        return lambda kind, pod: heard[key].append(object_key(pod))

    all_told = asyncio.Event()

    def tell(key: str) -> Any:
        def listener(kind: str, ev: dict[str, Any]) -> None:
            told[key].append(str(involved_key(ev)))
            if all(told.values()):
                all_told.set()

        return listener

    def ready(key: str) -> Any:
        def check(pod: dict[str, Any] | None) -> bool:
            checks[key] += 1
            return pod is not None and pod_ready(pod)

        return check

    pods.add_listener(lambda kind, pod: changes.update([object_key(pod)]))
    for key in keys:
        pods.watch_key(key, hear(key))
        events.watch_key(key, tell(key))
    pods.start()
    events.start()
    try:
        await asyncio.gather(pods.wait_synced(), events.wait_synced())
        waits = [asyncio.create_task(pods.wait_key(k, ready(k))) for k in keys]
        async with kube_http(k8s_cluster) as k:

            async def create(i: int) -> None:
                r = await k.post(f"/api/v1/namespaces/{ns}/pods", json=_pod(f"p{i}"))
                assert r.status_code == 201, r.text

            await asyncio.gather(*(create(i) for i in range(50)))
        async with asyncio.timeout(120):
            ready_pods = await asyncio.gather(*waits)
            await all_told.wait()  # the scheduler's events may arrive a moment later
        assert [object_key(p) for p in ready_pods if p] == keys
        assert sum(changes.values()) >= 3 * 50  # ADDED, scheduled, running (at least)
        for key in keys:
            assert heard[key] and set(heard[key]) == {key}
            assert len(heard[key]) == changes[key]  # all of its own changes, nobody else's
            assert set(told[key]) == {key}
            assert checks[key] <= 1 + changes[key]  # woken by its own changes only
        assert events.store == {}  # every event was heard, none kept
        stored = pods.store[keys[0]]
        assert "managedFields" not in stored["metadata"]
        assert set(stored["spec"]) <= {"nodeName", "containers", "initContainers"}
        assert pods._waiters == {}
    finally:
        await pods.stop()
        await events.stop()


async def test_backend_watches_only_the_facilitys_namespaces(k8s_cluster: KubeCluster) -> None:
    """No cluster-wide pod or event LIST: one informer per namespace; lookups find the pod in
    its VO namespace."""
    ns = await new_namespace(k8s_cluster)
    vo_ns = f"af-inf-{uuid.uuid4().hex[:8]}"
    fac = load_facility(facility(dune={"namespace": vo_ns, "quota": {"servers": 4}}))
    backend = KubernetesBackend(
        fac, KubeSettings(namespace=ns, kubeconfig=str(k8s_cluster.kubeconfig))
    )
    try:
        await backend.setup()  # creates the VO namespace and its quota
        assert sorted(backend.pods.members) == sorted([ns, vo_ns])
        for space, member in backend.pods.members.items():
            assert member.path == f"/api/v1/namespaces/{space}/pods"
        for space, member in backend.events.members.items():
            assert member.path == f"/api/v1/namespaces/{space}/events"
        name = pod_name("olga", "")
        labels = selector_labels("olga")
        async with kube_http(k8s_cluster) as k:
            r = await k.post(f"/api/v1/namespaces/{vo_ns}/pods", json=_pod(name, labels))
            assert r.status_code == 201, r.text
        async with asyncio.timeout(30):
            await backend.pods.wait_key(f"{vo_ns}/{name}", lambda pod: pod is not None)
        assert backend.pods.get(f"{ns}/{name}") is None
        state = await backend.find("olga", "")
        assert state == {"namespace": vo_ns, "pod": name}
        assert await backend.poll(state) is None
        await backend.stop(state, now=True)  # returns once its informer saw the pod go
        assert backend.pods.get(f"{vo_ns}/{name}") is None
        assert await backend.poll(state) == 0
    finally:
        await close_shared()


async def test_watches_never_take_the_connections_requests_need(k8s_cluster: KubeCluster) -> None:
    """A client with 2 connections, 4 namespaces watched: every informer syncs and a request
    still gets an answer (before, each watch kept one of the requests' connections)."""
    from kubernetes_asyncio import config

    from afspawner.kube.client import request

    cfg = client.Configuration()
    await config.load_kube_config(config_file=str(k8s_cluster.kubeconfig), client_configuration=cfg)
    cfg.connection_pool_maxsize = 2
    namespaces = [await new_namespace(k8s_cluster) for _ in range(4)]
    async with client.ApiClient(cfg) as api:
        informers = [Informer(api, f"/api/v1/namespaces/{ns}/configmaps") for ns in namespaces]
        for informer in informers:
            informer.start()
        try:
            async with asyncio.timeout(30):
                for informer in informers:
                    await informer.wait_synced()
                await _create(k8s_cluster, namespaces[0], "late")
                await _seen(informers[0], f"{namespaces[0]}/late")
                found = await request(api, "GET", f"/api/v1/namespaces/{namespaces[3]}/configmaps")
            assert found["kind"] == "ConfigMapList"
        finally:
            for informer in informers:
                await informer.stop()
            await close_shared()
