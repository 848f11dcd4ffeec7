"""Crash safety on the real control plane: ownership, stop without state, the sweep, home claims."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from afspawner.manifests import PodSettings, make_objects
from afspawner.plan import UserIdentity
from afspawner.policy import SpawnOptions, UserContext, resolve
from afspawner.quota import Reservation, Usage
from integration.spawnkit import (
    facility,
    kube_http,
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

CMS = {"uid": 50001, "gid": 5063, "vos": ["cms"]}
SWEEP = 1.0  # seconds between sweeps in these tests


async def _hub(af_hub: Any, cluster: KubeCluster, fac: dict[str, Any] | None = None) -> Any:
    ns = await new_namespace(cluster)
    opts = {
        "kubeconfig": str(cluster.kubeconfig),
        "namespace": ns,
        "unschedulable_grace": 1.0,
        "sweep_interval": SWEEP,
        "sweep_grace": SWEEP,
    }
    app = await af_hub(fac or facility(), spawner={"backend_options": opts})
    app.af_namespace = ns
    return app


async def _get(cluster: KubeCluster, path: str) -> dict[str, Any] | None:
    async with kube_http(cluster) as k:
        r = await k.get(path)
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return dict(r.json())


async def _until(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    start = time.monotonic()
    while time.monotonic() - start < within:
        if await check():
            return time.monotonic() - start
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {within:.0f}s: {what}")


def _inactive(app: Any, user: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not app.users[user].spawners[""].active

    return check


async def _spawned(app: Any, user: str) -> Any:
    await make_user(app, user, auth_state=CMS)
    r = await request_spawn(app, user, {"flavor": "cms-el9"})
    assert r.status_code in (201, 202), r.text
    await spawn_result(app, user)
    return app.users[user].spawners[""]


async def test_secret_is_owned_by_the_pod_and_collected_with_it(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub
) -> None:
    app = await _hub(af_hub, k8s_cluster)
    ns = app.af_namespace
    await _spawned(app, "olga")
    pod = await _get(k8s_cluster, f"/api/v1/namespaces/{ns}/pods/jupyter-olga")
    secret = await _get(k8s_cluster, f"/api/v1/namespaces/{ns}/secrets/jupyter-olga")
    assert pod is not None and secret is not None
    [ref] = secret["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"]) == ("Pod", "jupyter-olga", pod["metadata"]["uid"])
    # the pod disappears behind the hub's back: garbage collection takes its Secret
    async with kube_http(k8s_cluster) as k:
        r = await k.request(
            "DELETE",
            f"/api/v1/namespaces/{ns}/pods/jupyter-olga",
            json={"gracePeriodSeconds": 0, "propagationPolicy": "Background"},
        )
        assert r.status_code in (200, 202), r.text

    async def secret_gone() -> bool:
        return await _get(k8s_cluster, f"/api/v1/namespaces/{ns}/secrets/jupyter-olga") is None

    await _until(secret_gone, 30, "Secret collected with its pod")
    await stop_server(app, "olga")


async def test_stop_without_saved_state_removes_the_pod(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub
) -> None:
    app = await _hub(af_hub, k8s_cluster)
    spawner = await _spawned(app, "sven")
    rt = spawner.runtime
    assert [r.key for r in rt.ledger.reservations()] == ["sven/"]
    spawner.clear_state()  # as after a hub killed before it saved the state
    await spawner.stop(now=True)
    assert await pods_in(k8s_cluster, app.af_namespace) == []
    assert len(rt.ledger) == 0
    await stop_server(app, "sven")


async def test_poll_without_state_releases_and_removes_leftovers(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub
) -> None:
    """JupyterHub's stop of a server without state: poll() says stopped, so stop() is never
    called; poll() itself removes the pod and frees the quota."""
    app = await _hub(af_hub, k8s_cluster)
    spawner = await _spawned(app, "pia")
    rt = spawner.runtime
    spawner.clear_state()
    await stop_server(app, "pia")  # User.stop: poll() → 0 → no stop()
    assert await pods_in(k8s_cluster, app.af_namespace) == []
    assert len(rt.ledger) == 0


async def test_orphans_are_swept_within_one_period_and_their_quota_released(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub
) -> None:
    app = await _hub(af_hub, k8s_cluster)
    ns = app.af_namespace
    spawner = await _spawned(app, "kept")
    rt = spawner.runtime
    # what a hub killed mid-spawn leaves: a labelled pod (and an unowned Secret from an
    # older version) of a server the hub has no row for, still counted by the ledger
    fac = rt.facility
    user = UserContext("ghost", frozenset(), ("cms",))
    plan = resolve(fac, user, SpawnOptions("cms-el9"), UserIdentity("ghost", 50002, 5063))
    objs = make_objects(plan, PodSettings(namespace=ns, hub_env={"JUPYTERHUB_API_TOKEN": "x"}))
    lonely = make_objects(
        resolve(fac, user, SpawnOptions("cms-el9"), UserIdentity("ghost", 50002, 5063), "b"),
        PodSettings(namespace=ns),
    ).secret
    async with kube_http(k8s_cluster) as k:
        for kind, obj in (("pods", objs.pod), ("secrets", objs.secret), ("secrets", lonely)):
            r = await k.post(f"/api/v1/namespaces/{ns}/{kind}", json=obj)
            assert r.status_code == 201, r.text
    rt.ledger.put(Reservation("ghost", "", "cms", Usage(2000, 4 * 2**30, 1)))
    assert len(rt.ledger) == 2

    async def swept() -> bool:
        names = {p["metadata"]["name"] for p in await pods_in(k8s_cluster, ns)}
        async with kube_http(k8s_cluster) as k:
            secrets = (await k.get(f"/api/v1/namespaces/{ns}/secrets")).json()["items"]
        left = {s["metadata"]["name"] for s in secrets} & {"jupyter-ghost", "jupyter-ghost--b"}
        return names == {"jupyter-kept"} and not left and len(rt.ledger) == 1

    took = await _until(swept, 3 * SWEEP + SWEEP + 10, "orphans swept, quota released")
    assert took < 3 * SWEEP + SWEEP + 10
    assert [r.key for r in rt.ledger.reservations()] == ["kept/"]
    assert await spawner.poll() is None  # the known server was left alone
    await stop_server(app, "kept")


async def test_home_claim_is_labelled_kept_and_never_counted(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub
) -> None:
    fac = facility()
    fac["volumes"]["home"] = {"type": "home", "mount": "/home/jovyan", "size": "1Gi"}
    fac["flavors"][0]["volumes"] = ["cvmfs", "home"]
    app = await _hub(af_hub, k8s_cluster, fac)
    ns = app.af_namespace
    await make_user(app, "hana", auth_state=CMS)
    r = await request_spawn(app, "hana", {"flavor": "cms-el9"})
    assert r.status_code in (201, 202, 500), r.text
    # without a storage provisioner the claim stays Pending and the pod Unschedulable (the
    # spawn fails); where it binds, the server runs and is stopped: the claim stays either way
    try:
        await spawn_result(app, "hana")
    except Exception:
        await _until(_inactive(app, "hana"), 30, "failed spawn cleaned up")
    else:
        await stop_server(app, "hana")
    claim = await _get(k8s_cluster, f"/api/v1/namespaces/{ns}/persistentvolumeclaims/home-hana")
    assert claim is not None
    assert claim["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "jupyterhub-af",
        "app.kubernetes.io/component": "home",
        "af.jupyterhub.org/user": "hana",
    }
    assert "ownerReferences" not in claim["metadata"]
    rt = app.users["hana"].spawners[""].runtime
    await asyncio.sleep(2 * SWEEP)  # sweeps pass: the claim is not theirs
    assert await _get(k8s_cluster, f"/api/v1/namespaces/{ns}/persistentvolumeclaims/home-hana")
    assert await pods_in(k8s_cluster, ns) == []
    assert len(rt.ledger) == 0 and rt.sweeps >= 1
