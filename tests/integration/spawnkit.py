"""Helpers for spawner tests through a MockHub against the real control plane."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from typing import Any

import httpx
from jupyterhub import orm
from jupyterhub.tests.utils import add_user, auth_header
from jupyterhub.utils import url_path_join

from testbed.k8s import KubeCluster

GPU_CLASSES = {
    "t4": {
        "display": "NVIDIA T4",
        "resource": "nvidia.com/gpu",
        "selector": {"nvidia.com/gpu.product": "Tesla-T4"},
        "max_per_user": 4,
        "groups": ["gpu-approved"],
    },
    "a100-3g.20gb": {
        "display": "A100 3g.20gb",
        "resource": "nvidia.com/mig-3g.20gb",
        "max_per_user": 1,
    },
}


def facility(**vo_overrides: Any) -> dict[str, Any]:
    vos = {
        "cms": {
            "quota": {
                "cpu": 64,
                "memory": "256Gi",
                "servers": 20,
                "gpus": {"t4": 8, "a100-3g.20gb": 4},
            },
            "per_user": {"cpu": 16, "memory": "64Gi", "servers": 5, "gpus": {"t4": 4}},
        },
        "dune": {"quota": {"cpu": 16, "memory": "64Gi", "servers": 4}},
    }
    vos.update(vo_overrides)
    return {
        "site": {"name": "test facility"},
        "vos": vos,
        "gpu_classes": GPU_CLASSES,
        "volumes": {
            "cvmfs": {"type": "cvmfs", "mount": "/cvmfs"},
            "eos": {"type": "eos", "mount": "/eos"},
        },
        "flavors": [
            {
                "name": "cms-el9",
                "display": "CMS EL9",
                "vos": ["cms"],
                "image": "cms/el9:1",
                "cpu": 2,
                "memory": "4Gi",
                "volumes": ["cvmfs", "eos"],
                "default": True,
            },
            {
                "name": "cms-t4",
                "vos": ["cms"],
                "image": "cms/ml:1",
                "cpu": 2,
                "memory": "4Gi",
                "gpu": {"class": "t4", "count": 1},
            },
            {
                "name": "cms-a100",
                "vos": ["cms"],
                "image": "cms/ml:1",
                "cpu": 2,
                "memory": "4Gi",
                "gpu": {"class": "a100-3g.20gb"},
            },
            {"name": "dune-sl7", "vos": ["dune"], "image": "dune/sl7:1", "cpu": 1, "memory": "2Gi"},
            {
                "name": "broken-image",
                "vos": ["cms"],
                "image": "registry.invalid/missing:latest",
                "cpu": 1,
                "memory": "1Gi",
            },
            {
                "name": "crashing",
                "vos": ["cms"],
                "image": "registry.invalid/crash:latest",
                "cpu": 1,
                "memory": "1Gi",
            },
            # open to everyone (no VO quota), larger than any node: never schedulable
            {"name": "huge", "image": "cms/el9:1", "cpu": 100, "memory": "1Gi"},
        ],
    }


def kube_http(cluster: KubeCluster) -> httpx.AsyncClient:
    ctx = ssl.create_default_context(cafile=str(cluster.ca_path))
    return httpx.AsyncClient(
        base_url=cluster.server,
        verify=ctx,
        timeout=30,
        headers={"Authorization": f"Bearer {cluster.token}"},
    )


async def new_namespace(cluster: KubeCluster) -> str:
    name = f"af-test-{uuid.uuid4().hex[:8]}"
    async with kube_http(cluster) as k:
        r = await k.post("/api/v1/namespaces", json={"metadata": {"name": name}})
        assert r.status_code == 201, r.text
        for _ in range(100):
            if (
                await k.get(f"/api/v1/namespaces/{name}/serviceaccounts/default")
            ).status_code == 200:
                break
            await asyncio.sleep(0.1)
    return name


async def pods_in(cluster: KubeCluster, namespace: str) -> list[dict[str, Any]]:
    async with kube_http(cluster) as k:
        r = await k.get(f"/api/v1/namespaces/{namespace}/pods")
        r.raise_for_status()
        return list(r.json()["items"])


async def make_user(
    app: Any, name: str, groups: tuple[str, ...] = (), auth_state: dict[str, Any] | None = None
) -> Any:
    user = add_user(app.db, app, name=name)
    for gname in groups:
        group = orm.Group.find(app.db, gname)
        if group is None:
            group = orm.Group(name=gname)
            app.db.add(group)
        if user.orm_user not in group.users:
            group.users.append(user.orm_user)
    app.db.commit()
    if auth_state is not None:
        await user.save_auth_state(auth_state)
    return user


async def hub_api(app: Any, method: str, *path: str, body: Any = None) -> httpx.Response:
    """An admin API call straight to the hub, concurrent with others (JupyterHub's own test
    helper sends requests one at a time from a single thread)."""
    headers = auth_header(app.db, "admin")
    url = url_path_join(app.hub.url, "api", *path)
    async with httpx.AsyncClient(timeout=120) as client:
        return await client.request(method, url, json=body, headers=headers)


async def request_spawn(
    app: Any, user: str, options: dict[str, Any] | None = None, server: str = ""
) -> httpx.Response:
    path = ("users", user, "servers", server) if server else ("users", user, "server")
    return await hub_api(app, "POST", *path, body=options or {})


async def spawn_result(app: Any, user: str, server: str = "") -> None:
    """Await the spawn; raises what the spawner raised."""
    spawner = app.users[user].spawners[server]
    if spawner._spawn_future is not None:
        await spawner._spawn_future
    assert spawner.ready, f"{user}/{server} is not ready"


async def stop_server(app: Any, user: str, server: str = "") -> None:
    path = ("users", user, "servers", server) if server else ("users", user, "server")
    r = await hub_api(app, "DELETE", *path)
    assert r.status_code in (202, 204), r.text
    spawner = app.users[user].spawners[server]
    for _ in range(600):
        if not spawner.active:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{user}/{server} did not stop")
