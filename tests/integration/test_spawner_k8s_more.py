"""Quota races, GPU availability (refuse / FIFO queue), VO namespaces and restarts."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from afspawner import spawner as spawner_module
from afspawner.admission import WaitSettings
from afspawner.backends.kubernetes import KubernetesBackend, KubeSettings
from afspawner.kube.reconcile import QUOTA_NAME
from afspawner.loader import load_facility_file
from afspawner.manifests import PodSettings, make_objects
from afspawner.plan import UserIdentity
from afspawner.policy import SpawnOptions, UserContext, offered_flavors, resolve
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
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "facilities"


def _state(uid: int, vos: list[str]) -> dict[str, Any]:
    return {"uid": uid, "gid": 5063, "vos": vos}


async def _hub(af_hub: Any, cluster: KubeCluster, fac: dict[str, Any], **spawner: Any) -> Any:
    ns = await new_namespace(cluster)
    opts = {
        "kubeconfig": str(cluster.kubeconfig),
        "namespace": ns,
        "unschedulable_grace": 1.0,
        **spawner.pop("backend_options", {}),
    }
    app = await af_hub(fac, spawner={"backend_options": opts, **spawner})
    app.af_namespace = ns
    return app


async def test_concurrent_spawns_never_exceed_the_vo_quota(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub
) -> None:
    fac = facility(cms={"quota": {"cpu": 64, "memory": "256Gi", "servers": 5}})
    app = await _hub(af_hub, k8s_cluster, fac)
    users = [f"racer{i}" for i in range(12)]
    for i, name in enumerate(users):
        await make_user(app, name, auth_state=_state(60000 + i, ["cms"]))
    responses = await asyncio.gather(*(request_spawn(app, u, {"flavor": "cms-el9"}) for u in users))
    accepted = [u for u, r in zip(users, responses, strict=True) if r.status_code in (201, 202)]
    refused = [r for r in responses if r.status_code == 403]
    assert len(accepted) == 5, [r.status_code for r in responses]
    assert len(refused) == 7
    assert all("VO cms already runs 5/5 servers" in r.json()["message"] for r in refused)
    await asyncio.gather(*(spawn_result(app, u) for u in accepted))
    assert len(await pods_in(k8s_cluster, app.af_namespace)) == 5
    await asyncio.gather(*(stop_server(app, u) for u in accepted))
    # released on stop: a new spawn fits again
    r = await request_spawn(app, users[-1], {"flavor": "cms-el9"})
    assert r.status_code in (201, 202), r.text
    await spawn_result(app, users[-1])
    await stop_server(app, users[-1])


def _gpu_facility() -> dict[str, Any]:
    fac = facility(
        cms={
            "quota": {
                "cpu": 64,
                "memory": "256Gi",
                "servers": 20,
                "gpus": {"t4": 16, "a100-3g.20gb": 4},
            },
            "per_user": {"gpus": {"t4": 4}},
        }
    )
    fac["flavors"].append(
        {
            "name": "cms-t4x4",
            "vos": ["cms"],
            "image": "cms/ml:1",
            "cpu": 1,
            "memory": "2Gi",
            "gpu": {"class": "t4", "count": 4},
        }
    )
    return fac


async def _fill_t4(app: Any) -> list[str]:
    holders = ["gpu-a", "gpu-b"]  # 2 nodes x 4 T4 in the test cluster
    for i, name in enumerate(holders):
        await make_user(app, name, groups=("gpu-approved",), auth_state=_state(61000 + i, ["cms"]))
        r = await request_spawn(app, name, {"flavor": "cms-t4x4"})
        assert r.status_code in (201, 202), r.text
        await spawn_result(app, name)
    return holders


async def test_no_free_gpu_is_refused_at_once_with_a_clear_message(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub
) -> None:
    app = await _hub(af_hub, k8s_cluster, _gpu_facility())
    holders = await _fill_t4(app)
    try:
        await make_user(app, "gpu-c", groups=("gpu-approved",), auth_state=_state(61009, ["cms"]))
        r = await request_spawn(app, "gpu-c", {"flavor": "cms-t4"})
        assert r.status_code == 503, r.text
        assert "no NVIDIA T4 GPU is free right now" in r.json()["message"]
        assert len(await pods_in(k8s_cluster, app.af_namespace)) == 2
    finally:
        for name in holders:
            await stop_server(app, name)


async def test_gpu_queue_is_fifo_with_progress_and_proceeds_when_freed(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # no safety timer: only informer events (the freed pod) may wake the queue
    monkeypatch.setattr(spawner_module, "WaitSettings", partial(WaitSettings, safety_interval=3600))
    app = await _hub(af_hub, k8s_cluster, _gpu_facility(), gpu_wait="queue", gpu_queue_timeout=120)
    holders = await _fill_t4(app)
    for i, name in enumerate(("wait-1", "wait-2")):
        await make_user(app, name, groups=("gpu-approved",), auth_state=_state(62000 + i, ["cms"]))
        r = await request_spawn(app, name, {"flavor": "cms-t4"})
        assert r.status_code == 202, r.text
    messages: dict[str, str] = {}
    for name in ("wait-1", "wait-2"):
        async for event in app.users[name].spawners[""].progress():
            if "waiting for a NVIDIA T4" in event["message"]:
                messages[name] = event["message"]
                break
    assert messages["wait-1"] == "waiting for a NVIDIA T4: 0 ahead of you"
    assert messages["wait-2"] == "waiting for a NVIDIA T4: 1 ahead of you"
    assert len(await pods_in(k8s_cluster, app.af_namespace)) == 2
    await stop_server(app, holders[0])  # frees 4 units: both waiters fit, in order
    await spawn_result(app, "wait-1")
    await spawn_result(app, "wait-2")
    pods = await pods_in(k8s_cluster, app.af_namespace)
    assert sorted(p["metadata"]["name"] for p in pods) == [
        "jupyter-gpu-2db",
        "jupyter-wait-2d1",
        "jupyter-wait-2d2",
    ]
    assert all(p["spec"]["nodeName"].startswith("gpu-t4-") for p in pods)
    for name in ("wait-1", "wait-2", holders[1]):
        await stop_server(app, name)


async def test_vo_namespace_gets_a_reconciled_resource_quota(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub
) -> None:
    fac = facility()
    fac["vos"]["dune"]["namespace"] = "af-dune-test"
    app = await _hub(af_hub, k8s_cluster, fac)
    await make_user(app, "bob", auth_state=_state(50002, ["dune"]))
    r = await request_spawn(app, "bob", {"flavor": "dune-sl7"})
    assert r.status_code in (201, 202), r.text
    await spawn_result(app, "bob")
    assert [p["metadata"]["name"] for p in await pods_in(k8s_cluster, "af-dune-test")] == [
        "jupyter-bob"
    ]
    async with kube_http(k8s_cluster) as k:
        quota = await k.get(f"/api/v1/namespaces/af-dune-test/resourcequotas/{QUOTA_NAME}")
        hard = quota.json()["spec"]["hard"]
    assert hard == {"requests.cpu": "16", "requests.memory": "64Gi", "count/pods": "4"}
    await stop_server(app, "bob")


async def test_restarted_hub_rebuilds_ledger_and_polls_running_servers(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub
) -> None:
    app = await _hub(af_hub, k8s_cluster, facility())
    await make_user(app, "alice", auth_state=_state(50001, ["cms"]))
    r = await request_spawn(app, "alice", {"flavor": "cms-el9"}, server="analysis")
    assert r.status_code in (201, 202), r.text
    await spawn_result(app, "alice", "analysis")
    spawner = app.users["alice"].spawners["analysis"]
    saved = spawner.get_state()
    # a new process: fresh backend and informers see only the cluster
    fac = load_facility_file(spawner.facility_file)
    backend = KubernetesBackend(
        fac, KubeSettings(namespace=app.af_namespace, kubeconfig=str(k8s_cluster.kubeconfig))
    )
    reservations = await backend.running()
    mine = [r for r in reservations if r.username == "alice"]
    assert [(r.server_name, r.vo, r.usage.cpu_millis) for r in mine] == [("analysis", "cms", 2000)]
    assert await backend.poll(saved["af"]) is None  # still running
    await stop_server(app, "alice", "analysis")
    assert await backend.poll(saved["af"]) == 0


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
async def test_every_example_flavor_is_accepted_by_the_apiserver(
    k8s_cluster: KubeCluster, example: Path
) -> None:
    fac = load_facility_file(example)
    ns = await new_namespace(k8s_cluster)
    groups = frozenset(g for c in fac.gpu_classes.values() for g in c.groups) | frozenset(
        g for f in fac.flavors for g in f.groups
    )
    user = UserContext("o'brien.test", groups, tuple(fac.vos))
    ident = UserIdentity("o'brien.test", 50006, 5063, (5064,))
    async with kube_http(k8s_cluster) as k:
        for flavor in offered_flavors(fac, user):
            plan = resolve(fac, user, SpawnOptions(flavor.name), ident, "gpu-1")
            objs = make_objects(plan, PodSettings(namespace=ns, hub_env={"A": "b"}))
            for obj, kind in [(c, "persistentvolumeclaims") for c in objs.claims] + [
                (objs.secret, "secrets"),
                (objs.pod, "pods"),
            ]:
                obj = {**obj, "metadata": {**obj["metadata"], "namespace": ns}}
                r = await k.post(
                    f"/api/v1/namespaces/{ns}/{kind}", params={"dryRun": "All"}, json=obj
                )
                assert r.status_code == 201, f"{flavor.name} {kind}: {r.text}"
