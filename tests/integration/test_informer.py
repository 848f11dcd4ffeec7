"""The shared informer against the real apiserver: expired resourceVersions and outages."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio import client

from afspawner.kube.informer import Informer
from integration.spawnkit import kube_http, new_namespace
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
    await asyncio.wait_for(informer.wait_for(lambda: key in informer.store), 30)


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
