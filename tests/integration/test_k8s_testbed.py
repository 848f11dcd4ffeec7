"""Smoke tests of the real control plane: scheduling onto kwok nodes and quota admission."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

pytestmark = pytest.mark.k8s


@pytest.fixture
def api(k8s_api: client.ApiClient) -> client.ApiClient:
    return k8s_api


@pytest.fixture
async def namespace(api: client.ApiClient) -> AsyncIterator[str]:
    core = client.CoreV1Api(api)
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # the ServiceAccount admission plugin refuses pods until the default SA exists
    for _ in range(100):
        try:
            await core.read_namespaced_service_account("default", name)
            break
        except ApiException:
            await asyncio.sleep(0.2)
    yield name
    await core.delete_namespace(name)


def _pod(
    name: str,
    cpu: str,
    memory: str,
    extended: dict[str, str] | None = None,
    selector: dict[str, str] | None = None,
) -> client.V1Pod:
    requests = {"cpu": cpu, "memory": memory, **(extended or {})}
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            automount_service_account_token=False,
            node_selector=selector,
            containers=[
                client.V1Container(
                    name="notebook",
                    image="quay.io/jupyter/base-notebook:latest",
                    resources=client.V1ResourceRequirements(requests=requests, limits=requests),
                )
            ],
        ),
    )


async def _wait_running(core: client.CoreV1Api, ns: str, name: str) -> client.V1Pod:
    for _ in range(300):
        pod = await core.read_namespaced_pod(name, ns)
        if pod.status.phase == "Running":
            return pod
        await asyncio.sleep(0.1)
    raise AssertionError(f"pod {ns}/{name} not Running: {pod.status}")


async def test_nodes_are_ready_with_gpu_capacity(api: client.ApiClient) -> None:
    nodes = {n.metadata.name: n for n in (await client.CoreV1Api(api).list_node()).items}
    assert sorted(nodes) == sorted(
        [f"cpu-{i}" for i in range(1, 7)] + ["gpu-t4-1", "gpu-t4-2", "gpu-a100-1"]
    )
    for node in nodes.values():
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        assert ready and ready[0].status == "True", node.metadata.name
        assert not node.spec.taints, node.metadata.name
    t4 = nodes["gpu-t4-1"]
    assert t4.status.allocatable["nvidia.com/gpu"] == "4"
    assert t4.metadata.labels["nvidia.com/gpu.product"] == "Tesla-T4"
    a100 = nodes["gpu-a100-1"]
    assert a100.status.allocatable["nvidia.com/mig-3g.20gb"] == "2"
    assert a100.status.allocatable["nvidia.com/mig-1g.10gb"] == "7"
    assert a100.metadata.labels["nvidia.com/mig.strategy"] == "mixed"


async def test_pods_schedule_onto_matching_nodes_and_run(
    api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_pod(namespace, _pod("plain", "1", "2Gi"))
    await core.create_namespaced_pod(
        namespace,
        _pod("t4", "2", "8Gi", {"nvidia.com/gpu": "1"}, {"nvidia.com/gpu.product": "Tesla-T4"}),
    )
    await core.create_namespaced_pod(
        namespace, _pod("mig", "2", "8Gi", {"nvidia.com/mig-3g.20gb": "1"})
    )
    plain = await _wait_running(core, namespace, "plain")
    t4 = await _wait_running(core, namespace, "t4")
    mig = await _wait_running(core, namespace, "mig")
    assert t4.spec.node_name.startswith("gpu-t4-")
    assert mig.spec.node_name == "gpu-a100-1"
    for pod in (plain, t4, mig):
        assert pod.status.pod_ip.startswith("127.100."), pod.status.pod_ip


async def test_gpu_pod_beyond_capacity_stays_pending(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    # one A100 offers only two 3g.20gb slices: a request for three can never fit
    await core.create_namespaced_pod(
        namespace, _pod("too-big", "1", "1Gi", {"nvidia.com/mig-3g.20gb": "3"})
    )
    for _ in range(100):
        pod = await core.read_namespaced_pod("too-big", namespace)
        scheduled = [c for c in pod.status.conditions or [] if c.type == "PodScheduled"]
        if scheduled and scheduled[0].reason == "Unschedulable":
            break
        await asyncio.sleep(0.1)
    assert pod.status.phase == "Pending"
    assert scheduled and scheduled[0].reason == "Unschedulable"
    assert "nvidia.com/mig-3g.20gb" in scheduled[0].message


async def test_resource_quota_rejects_pod_over_limit(api: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_resource_quota(
        namespace,
        client.V1ResourceQuota(
            metadata=client.V1ObjectMeta(name="vo-quota"),
            spec=client.V1ResourceQuotaSpec(
                hard={"requests.cpu": "3", "requests.memory": "8Gi", "requests.nvidia.com/gpu": "1"}
            ),
        ),
    )
    # the controller-manager must compute the quota status before admission enforces it
    for _ in range(300):
        quota = await core.read_namespaced_resource_quota("vo-quota", namespace)
        if quota.status and quota.status.hard:
            break
        await asyncio.sleep(0.1)
    assert quota.status.hard["requests.cpu"] == "3"
    await core.create_namespaced_pod(namespace, _pod("fits", "2", "4Gi"))
    with pytest.raises(ApiException) as refused:
        await core.create_namespaced_pod(namespace, _pod("over", "2", "4Gi"))
    assert refused.value.status == 403
    assert "exceeded quota: vo-quota" in refused.value.body
    with pytest.raises(ApiException) as no_gpu:
        await core.create_namespaced_pod(
            namespace, _pod("gpus", "500m", "1Gi", {"nvidia.com/gpu": "2"})
        )
    assert no_gpu.value.status == 403
    assert "requests.nvidia.com/gpu" in no_gpu.value.body
