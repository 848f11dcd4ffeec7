"""AFSpawner through a real JupyterHub (MockHub) against the real Kubernetes control plane."""

from __future__ import annotations

from typing import Any

import pytest

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

CMS_ALICE = {"uid": 50001, "gid": 5063, "vos": ["cms"]}


@pytest.fixture
async def hub(af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub) -> Any:
    ns = await new_namespace(k8s_cluster)
    app = await af_hub(
        facility(),
        spawner={
            "backend_options": {
                "kubeconfig": str(k8s_cluster.kubeconfig),
                "namespace": ns,
                "unschedulable_grace": 1.0,
            }
        },
    )
    app.af_namespace = ns
    return app


async def test_cpu_flavor_runs_with_identity_and_volumes(
    hub: Any, k8s_cluster: KubeCluster
) -> None:
    await make_user(hub, "alice", auth_state=CMS_ALICE)
    r = await request_spawn(hub, "alice", {"flavor": "cms-el9"})
    assert r.status_code in (201, 202), r.text
    await spawn_result(hub, "alice")
    [pod] = await pods_in(k8s_cluster, hub.af_namespace)
    assert pod["status"]["phase"] == "Running"
    assert pod["spec"]["nodeName"]  # scheduled by the real kube-scheduler
    sc = pod["spec"]["securityContext"]
    assert (sc["runAsUser"], sc["runAsGroup"], sc["fsGroup"]) == (50001, 5063, 5063)
    assert sc["fsGroupChangePolicy"] == "OnRootMismatch" and sc["runAsNonRoot"] is True
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
    assert (env["NB_USER"], env["NB_UID"], env["NB_GID"]) == ("alice", "50001", "5063")
    assert "JUPYTERHUB_API_TOKEN" not in env  # it lives in the per-server Secret
    mounts = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/cvmfs"]["mountPropagation"] == "HostToContainer"
    assert mounts["/cvmfs"]["readOnly"] is True
    assert mounts["/eos"]["mountPropagation"] == "HostToContainer"
    assert pod["metadata"]["labels"]["af.jupyterhub.org/vo"] == "cms"
    await stop_server(hub, "alice")
    assert await pods_in(k8s_cluster, hub.af_namespace) == []


@pytest.mark.parametrize(
    ("flavor", "node_prefix", "resource"),
    [
        ("cms-t4", "gpu-t4-", "nvidia.com/gpu"),
        ("cms-a100", "gpu-a100-", "nvidia.com/mig-3g.20gb"),
    ],
)
async def test_gpu_flavors_land_on_their_nodes(
    hub: Any, k8s_cluster: KubeCluster, flavor: str, node_prefix: str, resource: str
) -> None:
    await make_user(hub, "dave", groups=("gpu-approved",), auth_state=CMS_ALICE)
    r = await request_spawn(hub, "dave", {"flavor": flavor})
    assert r.status_code in (201, 202), r.text
    await spawn_result(hub, "dave")
    [pod] = await pods_in(k8s_cluster, hub.af_namespace)
    assert pod["spec"]["nodeName"].startswith(node_prefix)
    limits = pod["spec"]["containers"][0]["resources"]["limits"]
    assert limits[resource] == "1"
    await stop_server(hub, "dave")


@pytest.mark.parametrize(
    ("user_groups", "options", "status", "message"),
    [
        ((), {"flavor": "dune-sl7"}, 403, "flavor 'dune-sl7' is for members of dune"),
        ((), {"flavor": "cms-t4"}, 403, "NVIDIA T4 GPUs require approval"),
        (("gpu-approved",), {"flavor": "cms-t4", "gpus": 9}, 403, "at most 4 NVIDIA T4 GPU(s)"),
        ((), {"flavor": "cms-el9", "image": "evil/miner"}, 400, "not let you choose an image"),
        ((), {"flavor": "cms-el9", "cmd": "sh"}, 400, "unknown server option(s) 'cmd'"),
        ((), {"flavor": "no-such"}, 400, "unknown flavor 'no-such'"),
        (
            (),
            {"flavor": "cms-el9", "vo": "dune"},
            403,
            "cannot charge flavor 'cms-el9' to VO 'dune'",
        ),
        ((), {"flavor": ["a", "b"]}, 400, "option 'flavor' must be a flavor/VO name"),
    ],
)
async def test_forged_options_are_refused_and_create_nothing(
    hub: Any,
    k8s_cluster: KubeCluster,
    user_groups: tuple[str, ...],
    options: dict[str, Any],
    status: int,
    message: str,
) -> None:
    await make_user(hub, "mallory", groups=user_groups, auth_state=CMS_ALICE)
    r = await request_spawn(hub, "mallory", options)
    assert r.status_code == status, r.text
    assert message in r.json()["message"]
    assert await pods_in(k8s_cluster, hub.af_namespace) == []
    async with kube_http(k8s_cluster) as k:
        secrets = (await k.get(f"/api/v1/namespaces/{hub.af_namespace}/secrets")).json()
    assert [s for s in secrets["items"] if s["metadata"]["name"].startswith("jupyter-")] == []


async def test_user_without_uid_is_refused(hub: Any, k8s_cluster: KubeCluster) -> None:
    await make_user(hub, "nouid", auth_state={"vos": ["cms"]})
    r = await request_spawn(hub, "nouid", {"flavor": "cms-el9"})
    assert r.status_code == 403
    assert "no POSIX account is known for 'nouid'" in r.json()["message"]
    assert await pods_in(k8s_cluster, hub.af_namespace) == []


@pytest.mark.parametrize(
    ("flavor", "reason"),
    [
        ("broken-image", "ErrImagePull"),
        ("crashing", "CrashLoopBackOff"),
        ("huge", "Unschedulable"),
    ],
)
async def test_failing_pods_fail_the_spawn_early_with_the_reason(
    hub: Any, k8s_cluster: KubeCluster, flavor: str, reason: str
) -> None:
    # "huge" is open to everyone: a user without a VO is not charged to any VO quota
    state = {"uid": 50005, "gid": 9010} if flavor == "huge" else CMS_ALICE
    await make_user(hub, "erin", auth_state=state)
    r = await request_spawn(hub, "erin", {"flavor": flavor})
    assert r.status_code in (201, 202, 500), r.text
    with pytest.raises(Exception) as failed:
        await spawn_result(hub, "erin")
    assert reason in str(failed.value)
    assert await pods_in(k8s_cluster, hub.af_namespace) == []
