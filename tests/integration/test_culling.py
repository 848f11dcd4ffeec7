"""Idle limits per flavor/GPU class enforced by the hub, and uid sources per IdP, on a real hub
against the real control plane (kube-apiserver + kube-scheduler + kwok)."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from afspawner.culling import NOTICE_KEY
from afspawner.hubcull import stop_notices
from integration.spawnkit import (
    facility,
    make_user,
    new_namespace,
    pods_in,
    request_spawn,
    spawn_result,
    stop_server,
)
from testbed.k8s import KubeCluster
from testbed.podstub import PodStub

pytestmark = [pytest.mark.k8s, pytest.mark.hub]

GPU_IDLE = 3  # seconds a T4 server may stay idle in these tests


async def _until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {within:.0f}s: {what}")


def _culling_facility() -> dict[str, Any]:
    """One T4 for the whole VO, so a second T4 server can start only once the first is gone."""
    fac = facility(
        cms={
            "quota": {
                "cpu": 64,
                "memory": "256Gi",
                "servers": 20,
                "gpus": {"t4": 1, "a100-3g.20gb": 1},
            },
            "per_user": {"cpu": 16, "memory": "64Gi", "servers": 5},
        }
    )
    fac["idle"] = {"timeout": "1h"}  # CPU servers: the default
    fac["gpu_classes"]["t4"]["idle"] = {"timeout": f"{GPU_IDLE}s", "max_age": "12h"}
    return fac


async def _page(app: Any, user: str, path: str) -> str:
    """A hub page as the logged-in user sees it (MockHub's authenticator takes any password)."""
    base = app.bind_url.rstrip("/")
    async with httpx.AsyncClient(timeout=30, follow_redirects=True) as client:
        await client.get(f"{base}/hub/login")
        xsrf = client.cookies.get("_xsrf", "")
        await client.post(
            f"{base}/hub/login", data={"username": user, "password": user, "_xsrf": xsrf}
        )
        r = await client.get(f"{base}/hub/{path}")
    assert r.status_code == 200, r.text
    return r.text


async def test_an_idle_gpu_server_is_stopped_and_its_gpu_freed_a_cpu_one_is_not(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub
) -> None:
    ns = await new_namespace(k8s_cluster)
    app = await af_hub(
        _culling_facility(),
        spawner={
            "backend_options": {"kubeconfig": str(k8s_cluster.kubeconfig), "namespace": ns},
            "idle_check_interval": 0.5,
        },
        hub={"template_vars": {"announcement_home": stop_notices}},
    )
    cms = {"vos": ["cms"], "gid": 5063}
    await make_user(app, "alice", ("gpu-approved",), {**cms, "uid": 50001})
    await make_user(app, "bob", ("gpu-approved",), {**cms, "uid": 50002})
    for server, flavor in (("cpu", "cms-el9"), ("gpu", "cms-t4")):
        r = await request_spawn(app, "alice", {"flavor": flavor}, server=server)
        assert r.status_code in (201, 202), r.text
        await spawn_result(app, "alice", server)
    began = time.monotonic()
    # while alice's T4 server runs, the VO's only T4 is taken
    r = await request_spawn(app, "bob", {"flavor": "cms-t4"}, server="gpu")
    assert r.status_code == 403 and "t4" in r.json()["message"].lower(), r.text

    gpu = app.users["alice"].spawners["gpu"]
    orm_gpu = gpu.orm_spawner

    async def gpu_stopped() -> bool:
        return orm_gpu.server is None and not gpu._stop_pending

    await _until(gpu_stopped, 60, "the idle T4 server is stopped")
    assert time.monotonic() - began >= GPU_IDLE - 1  # not before its limit
    assert app.users["alice"].spawners["cpu"].active  # 1h limit: still running
    # the hub's own stop path: no server row, and the pod is deleted
    names = {p["metadata"]["name"] for p in await pods_in(k8s_cluster, ns)}
    assert "jupyter-alice--cpu" in names

    async def pod_gone() -> bool:
        return "jupyter-alice--gpu" not in {
            p["metadata"]["name"] for p in await pods_in(k8s_cluster, ns)
        }

    await _until(pod_gone, 30, "the T4 pod is deleted")

    # the reason is kept with the stopped server and shown to alice
    saved = orm_gpu.state[NOTICE_KEY]
    assert saved["reason"] == "idle"
    assert "the limit for NVIDIA T4 servers is 3s idle" in saved["message"]
    assert saved["message"].startswith("Your server 'gpu' was stopped by the hub on ")
    spawn_page = await _page(app, "alice", "spawn/alice/gpu")
    assert "af-stopped" in spawn_page and "the limit for NVIDIA T4 servers is 3s idle" in spawn_page
    home = await _page(app, "alice", "home")
    assert "the limit for NVIDIA T4 servers is 3s idle" in home
    assert "limit for" not in await _page(app, "bob", "home")
    # MockHub's own login replaced the auth_state: put the test users' back
    await app.users["alice"].save_auth_state({**cms, "uid": 50001})
    await app.users["bob"].save_auth_state({**cms, "uid": 50002})

    # quota and GPU were released at once: bob's T4 server starts now
    r = await request_spawn(app, "bob", {"flavor": "cms-t4"}, server="gpu")
    assert r.status_code in (201, 202), r.text
    await spawn_result(app, "bob", "gpu")
    # bob's server is culled in turn; alice's CPU server is never
    bob_gpu = app.users["bob"].spawners["gpu"].orm_spawner

    async def bob_stopped() -> bool:
        return bob_gpu.server is None

    await _until(bob_stopped, 60, "bob's idle T4 server is stopped")
    assert app.users["alice"].spawners["cpu"].active

    # a new start of alice's T4 server clears the notice
    r = await request_spawn(app, "alice", {"flavor": "cms-t4"}, server="gpu")
    assert r.status_code in (201, 202), r.text
    await spawn_result(app, "alice", "gpu")
    assert NOTICE_KEY not in (app.users["alice"].spawners["gpu"].orm_spawner.state or {})
    await stop_server(app, "alice", "gpu")
    await stop_server(app, "alice", "cpu")


def _run_as(pod: dict[str, Any]) -> int | None:
    spec = pod["spec"]
    for ctx in [spec.get("securityContext") or {}] + [
        c.get("securityContext") or {} for c in spec["containers"]
    ]:
        if "runAsUser" in ctx:
            return int(ctx["runAsUser"])
    return None


async def test_uid_sources_per_idp_pool_for_cilogon_directory_uid_for_ldap(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub, tmp_path: Path
) -> None:
    ns = await new_namespace(k8s_cluster)
    app = await af_hub(
        facility(),
        spawner={
            "backend_options": {"kubeconfig": str(k8s_cluster.kubeconfig), "namespace": ns},
            "uid_sources": ["auth_state", "static"],
            "uid_sources_by_idp": {"cilogon": ["pool"], "fnal-ldap": ["auth_state"]},
            "uid_pool_file": str(tmp_path / "pool.json"),
            "uid_pool_range": [61000, 61099],
            "uid_pool_gid": 61000,
        },
    )
    users = {
        # an external user through CILogon: no POSIX account at the lab
        "carla": {"idp": "cilogon", "uid": None, "gid": None, "vos": ["cms"]},
        # CILogon may pass a uid claim along; it is not trusted for this IdP
        "erik": {"idp": "cilogon", "uid": 5002, "gid": 5063, "vos": ["cms"]},
        # a lab user through the directory keeps their uid
        "dana": {"idp": "fnal-ldap", "uid": 5001, "gid": 5063, "vos": ["cms"]},
    }
    for name, state in users.items():
        await make_user(app, name, auth_state=state)
        r = await request_spawn(app, name, {"flavor": "cms-el9"})
        assert r.status_code in (201, 202), r.text
        await spawn_result(app, name)
    pods = {p["metadata"]["name"]: p for p in await pods_in(k8s_cluster, ns)}
    assert _run_as(pods["jupyter-carla"]) == 61000
    assert _run_as(pods["jupyter-erik"]) == 61001
    assert _run_as(pods["jupyter-dana"]) == 5001
    assert '"dana"' not in (tmp_path / "pool.json").read_text()
    # an LDAP login without uidNumber is refused, never given a pool or shared uid
    await make_user(app, "frank", auth_state={"idp": "fnal-ldap", "uid": None, "vos": ["cms"]})
    r = await request_spawn(app, "frank", {"flavor": "cms-el9"})
    assert r.status_code == 403 and "looked in: auth_state" in r.json()["message"], r.text
    for name in users:
        await stop_server(app, name)


async def test_coexists_with_jupyterhub_idle_culler(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub
) -> None:
    """The real idle culler runs as a hub service with a longer, global timeout: the hub stops
    the T4 server at its own limit (and says why), the idle culler the CPU server later."""
    import jupyterhub_idle_culler  # noqa: F401  (a test dependency: fail, never skip, without it)

    ns = await new_namespace(k8s_cluster)
    culler = [sys.executable, "-m", "jupyterhub_idle_culler", "--timeout=10", "--cull-every=1"]
    app = await af_hub(
        _culling_facility(),
        spawner={
            "backend_options": {"kubeconfig": str(k8s_cluster.kubeconfig), "namespace": ns},
            "idle_check_interval": 0.5,
        },
        hub={
            "services": [{"name": "idle-culler", "command": culler}],
            "load_roles": [
                {
                    "name": "idle-culler",
                    "scopes": [
                        "list:users",
                        "read:users:activity",
                        "read:servers",
                        "delete:servers",
                    ],
                    "services": ["idle-culler"],
                }
            ],
        },
    )
    await make_user(app, "alice", ("gpu-approved",), {"vos": ["cms"], "uid": 50001, "gid": 5063})
    for server, flavor in (("cpu", "cms-el9"), ("gpu", "cms-t4")):
        r = await request_spawn(app, "alice", {"flavor": flavor}, server=server)
        assert r.status_code in (201, 202), r.text
        await spawn_result(app, "alice", server)
    orm = {name: app.users["alice"].spawners[name].orm_spawner for name in ("cpu", "gpu")}

    def stopped(name: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return orm[name].server is None

        return check

    gpu_after = await _until(stopped("gpu"), 60, "the T4 server is stopped by the hub")
    assert orm["cpu"].server is not None  # the idle culler's 10s have not passed yet
    cpu_after = await _until(stopped("cpu"), 90, "the CPU server is stopped by the idle culler")
    assert cpu_after > 0 and gpu_after < 10
    assert "the limit for NVIDIA T4 servers is 3s idle" in orm["gpu"].state[NOTICE_KEY]["message"]
    assert NOTICE_KEY not in (orm["cpu"].state or {})  # not stopped for one of the file's limits
    await _until(lambda: _no_pods(k8s_cluster, ns), 30, "both pods are deleted")


async def _no_pods(cluster: KubeCluster, ns: str) -> bool:
    return not await pods_in(cluster, ns)
