"""Admission is decided in ``apply_user_options``, before the pre-spawn hook and ``start()``."""

from __future__ import annotations

from typing import Any

import pytest

from afspawner.spawner import AFSpawner
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

CMS = {"vos": ["cms"]}
HOOKED: list[str] = []


def _pre_spawn_hook(spawner: Any) -> None:
    HOOKED.append(spawner.user.name)


async def _hub(af_hub: Any, cluster: KubeCluster, **spawner: Any) -> Any:
    ns = await new_namespace(cluster)
    fac = facility(cms={"quota": {"servers": 1}})
    uid_map = {"alice": (50001, 5063), "bob": (50002, 5063)}
    app = await af_hub(
        fac,
        spawner={
            "backend_options": {"kubeconfig": str(cluster.kubeconfig), "namespace": ns},
            "uid_sources": ["auth_state"],
            "pre_spawn_hook": _pre_spawn_hook,
            **spawner,
        },
    )
    for name, (uid, gid) in uid_map.items():
        await make_user(app, name, auth_state={**CMS, "uid": uid, "gid": gid})
    app.af_namespace = ns
    return app


async def test_quota_refusal_comes_before_the_pre_spawn_hook_and_start(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub
) -> None:
    HOOKED.clear()
    hub = await _hub(af_hub, k8s_cluster)
    spawner = hub.users["alice"].spawners[""]
    assert isinstance(spawner, AFSpawner) and spawner.apply_user_options is not None
    r = await request_spawn(hub, "alice", {"flavor": "cms-el9"})
    assert r.status_code in (201, 202), r.text
    await spawn_result(hub, "alice")
    r = await request_spawn(hub, "bob", {"flavor": "cms-el9"})
    assert r.status_code == 403, r.text
    assert "VO cms already runs 1/1 servers" in r.json()["message"]
    assert HOOKED == ["alice"]  # bob was refused before the hook ran
    assert [p["metadata"]["name"] for p in await pods_in(k8s_cluster, hub.af_namespace)] == [
        "jupyter-alice"
    ]
    # a forged option is a 400 at the same point
    r = await request_spawn(hub, "bob", {"flavor": "cms-el9", "image": "evil/miner"})
    assert r.status_code == 400 and "not let you choose an image" in r.json()["message"]
    assert HOOKED == ["alice"]
    await stop_server(hub, "alice")
    r = await request_spawn(hub, "bob", {"flavor": "cms-el9"})  # the slot was released
    assert r.status_code in (201, 202), r.text
    await spawn_result(hub, "bob")
    await stop_server(hub, "bob")


def _site_hook(spawner: Any, user_options: Any) -> None:
    HOOKED.append(f"site:{spawner.user.name}")


async def test_a_site_apply_user_options_still_gets_the_same_decision_in_start(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub
) -> None:
    HOOKED.clear()
    hub = await _hub(af_hub, k8s_cluster, apply_user_options=_site_hook)
    r = await request_spawn(hub, "bob", {"flavor": "cms-el9", "image": "evil/miner"})
    assert r.status_code == 400 and "not let you choose an image" in r.json()["message"]
    assert HOOKED == ["site:bob", "bob"]  # the site hook ran; start() refused
    assert await pods_in(k8s_cluster, hub.af_namespace) == []
    r = await request_spawn(hub, "alice", {"flavor": "cms-el9"})
    assert r.status_code in (201, 202), r.text
    await spawn_result(hub, "alice")
    await stop_server(hub, "alice")
