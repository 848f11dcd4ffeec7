"""Defence in depth: per-VO namespaces with a ResourceQuota mirroring the facility file.

The hub's ledger is the primary enforcement; this quota stops anything that bypasses the hub
(or a hub bug) at the API server. It is created or updated at backend start.
"""

from __future__ import annotations

from typing import Any

from kubernetes_asyncio import client

from afcore.quantity import format_cpu, format_memory
from afspawner.facility import VO, Facility
from afspawner.kube.client import KubeError, request

QUOTA_NAME = "af-vo-quota"


def vo_quota_spec(fac: Facility, vo: VO) -> dict[str, str]:
    """ResourceQuota ``hard`` for a VO: requests and GPU resources summed by resource name."""
    hard: dict[str, str] = {}
    if vo.quota.cpu_millis is not None:
        hard["requests.cpu"] = format_cpu(vo.quota.cpu_millis)
    if vo.quota.memory_bytes is not None:
        hard["requests.memory"] = format_memory(vo.quota.memory_bytes)
    if vo.quota.servers is not None:
        hard["count/pods"] = str(vo.quota.servers)
    per_resource: dict[str, int] = {}
    for name, n in vo.quota.gpus.items():
        resource = fac.gpu_classes[name].resource
        per_resource[resource] = per_resource.get(resource, 0) + n
    for resource, n in sorted(per_resource.items()):
        hard[f"requests.{resource}"] = str(n)
    return hard


async def reconcile_vo_namespaces(api: client.ApiClient, fac: Facility) -> list[str]:
    """Ensure each VO namespace and its quota exist and match; returns namespaces touched."""
    touched = []
    for vo in fac.vos.values():
        if not vo.namespace:
            continue
        ns_body = {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": vo.namespace,
                "labels": {
                    "app.kubernetes.io/managed-by": "jupyterhub-af",
                    "af.jupyterhub.org/vo": vo.name,
                },
            },
        }
        try:
            await request(api, "POST", "/api/v1/namespaces", body=ns_body)
        except KubeError as exc:
            if exc.status != 409:
                raise
        quota: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": QUOTA_NAME, "namespace": vo.namespace},
            "spec": {"hard": vo_quota_spec(fac, vo)},
        }
        base = f"/api/v1/namespaces/{vo.namespace}/resourcequotas"
        try:
            await request(api, "POST", base, body=quota)
        except KubeError as exc:
            if exc.status != 409:
                raise
            current = await request(api, "GET", f"{base}/{QUOTA_NAME}")
            quota["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            await request(api, "PUT", f"{base}/{QUOTA_NAME}", body=quota)
        touched.append(vo.namespace)
    return touched
