"""What Dask pods get on Kubernetes, without an apiserver: the configuration from the plan
(VO namespace, flavor's image and volumes, the user's identity, the token Secret), and the pod
dask-gateway's own ``KubeController.make_pod`` builds from it."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from dask_gateway_server.backends.kubernetes.backend import KubeClusterConfig
from dask_gateway_server.backends.kubernetes.controller import KubeController

from afdask.auth import AFUser
from afdask.kube import owned_by_cluster, token_secret_name, with_token_secret
from afdask.kube_backend import AFKubeBackend
from afspawner.loader import load_facility
from afspawner.plan import UserIdentity
from afspawner.policy import Refusal

FACILITY: dict[str, Any] = {
    "site": {"name": "kube dask unit"},
    "vos": {
        "cms": {"namespace": "af-cms", "quota": {"cpu": 13}},
        "atlas": {"quota": {"cpu": 4}},
    },
    "gpu_classes": {
        "t4": {
            "resource": "nvidia.com/gpu",
            "selector": {"nvidia.com/gpu.product": "Tesla-T4"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        }
    },
    "volumes": {
        "cvmfs": {"type": "cvmfs", "mount": "/cvmfs"},
        "ceph-user": {
            "type": "cephfs",
            "claim": "ceph-cms",
            "sub_path": "store/user/{username}",
            "mount": "/ceph/cms/store/user/{username}",
        },
        "eos": {"type": "eos", "mount": "/eos", "host_path": "/var/eos"},
        "home": {"type": "home", "mount": "/home/jovyan", "size": "1Gi"},
    },
    "flavors": [
        {
            "name": "cms-coffea",
            "vos": ["cms"],
            "image": "registry.example/coffea:1",
            "cpu": 1,
            "memory": "2Gi",
            "volumes": ["cvmfs", "ceph-user", "eos", "home"],
            "dask": {
                "image": "registry.example/coffea-dask:1",
                "scheduler": {"cpu": 1, "memory": "1Gi"},
                "worker_sizes": {
                    "small": {"cpu": 1, "memory": "2Gi"},
                    "gpu": {"cpu": 1, "memory": "2Gi", "gpu": {"class": "t4", "count": 2}},
                },
                "max_workers": 20,
            },
        },
        {
            "name": "atlas-nb",
            "vos": ["atlas"],
            "image": "registry.example/atlas:1",
            "cpu": 1,
            "memory": "1Gi",
            "dask": {"worker_sizes": {"medium": {"cpu": 1, "memory": "1Gi"}}},
        },
    ],
}
ALICE = AFUser(
    "alice", {"cms"}, vos=("cms",), identity=UserIdentity("alice", 50001, 5063, (5064, 5065))
)


@pytest.fixture
def backend() -> AFKubeBackend:
    b = AFKubeBackend(gateway_instance="af-unit")
    b.facility = load_facility(copy.deepcopy(FACILITY))
    return b


def _config(backend: AFKubeBackend, user: AFUser, **chosen: str) -> dict[str, Any]:
    options = asyncio.run(backend.get_cluster_options(user))
    picked = options.parse_options(chosen)
    return dict(options.get_configuration(picked, user))


def test_the_configuration_is_the_vos_and_the_users(backend: AFKubeBackend) -> None:
    values = _config(backend, ALICE)
    config = KubeClusterConfig(**values)  # all valid trait values
    assert (config.namespace, config.image) == ("af-cms", "registry.example/coffea-dask:1")
    pod = config.worker_extra_pod_config
    assert pod["securityContext"] == {
        "runAsUser": 50001,
        "runAsGroup": 5063,
        "fsGroup": 5063,
        "supplementalGroups": [5064, 5065],
        "runAsNonRoot": True,
    }
    names = [v["name"] for v in pod["volumes"]]
    assert names == ["vol-cvmfs", "vol-ceph-user", "vol-eos", "vol-home"]
    mounts = {m["name"]: m for m in config.worker_extra_container_config["volumeMounts"]}
    assert mounts["vol-ceph-user"]["mountPath"] == "/ceph/cms/store/user/alice"
    assert mounts["vol-ceph-user"]["subPath"] == "store/user/alice"
    claims = {
        v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]
    }
    assert claims["vol-home"] == "home-alice"
    assert config.scheduler_extra_pod_config == pod


def test_a_vo_without_namespace_uses_the_default_and_forged_options_fail(
    backend: AFKubeBackend,
) -> None:
    bob = AFUser("bob", {"atlas"}, vos=("atlas",), identity=UserIdentity("bob", 50002, 5070, ()))
    backend.default_namespace = "dask"
    assert _config(backend, bob)["namespace"] == "dask"
    with pytest.raises(Refusal, match="flavor 'cms-coffea' is for members of cms"):
        _config(backend, bob, flavor="cms-coffea")
    root = AFUser("root", {"cms"}, vos=("cms",), identity=UserIdentity("root", 0, 0, ()))
    with pytest.raises(Refusal, match="uid/gid 0"):
        _config(backend, root)


def test_the_controllers_pod_has_identity_volumes_and_token(backend: AFKubeBackend) -> None:
    values = with_token_secret(_config(backend, ALICE), token_secret_name("abc123"))
    controller = KubeController(gateway_instance="af-unit", api_url="http://gw/api")
    config = KubeClusterConfig(**values)
    for is_worker in (True, False):
        pod = controller.make_pod("af-cms", "abc123", config, is_worker=is_worker)
        spec = pod["spec"]
        assert spec["securityContext"]["runAsUser"] == 50001
        (container,) = spec["containers"]
        assert container["image"] == "registry.example/coffea-dask:1"
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert set(volumes) == {
            "dask-credentials",
            "vol-cvmfs",
            "vol-ceph-user",
            "vol-eos",
            "vol-home",
            "af-token",
        }
        assert volumes["af-token"]["secret"]["secretName"] == "dask-token-abc123"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["BEARER_TOKEN_FILE"] == "/etc/af-token/bearer_token"
        assert env["NB_UID"] == "50001" and env["AF_VO"] == "cms"
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/cvmfs", "/eos", "/home/jovyan", "/etc/af-token"} <= mounts
        assert container["resources"]["limits"] == {
            "cpu": "1.000",
            "memory": str((2 if is_worker else 1) << 30),
        }


def test_the_token_secret_is_owned_by_the_cluster() -> None:
    cluster = {
        "apiVersion": "gateway.dask.org/v1alpha1",
        "metadata": {"name": "abc", "uid": "1234"},
    }
    secret = owned_by_cluster({"metadata": {"name": "dask-token-abc"}}, cluster)
    (ref,) = secret["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["uid"]) == ("DaskCluster", "abc", "1234")
    assert secret["metadata"]["name"] == "dask-token-abc"


def test_gpu_workers_get_the_resource_selector_and_tolerations(backend: AFKubeBackend) -> None:
    values = with_token_secret(_config(backend, ALICE, worker_size="gpu"), token_secret_name("g1"))
    controller = KubeController(gateway_instance="af-unit", api_url="http://gw/api")
    config = KubeClusterConfig(**values)
    worker = controller.make_pod("af-cms", "g1", config, is_worker=True)["spec"]
    (container,) = worker["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["limits"]["cpu"] == "1.000"  # merged, not replaced
    assert worker["nodeSelector"] == {"nvidia.com/gpu.product": "Tesla-T4"}
    assert worker["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert worker["securityContext"]["runAsUser"] == 50001
    assert {v["name"] for v in worker["volumes"]} >= {"vol-cvmfs", "af-token"}
    scheduler = controller.make_pod("af-cms", "g1", config, is_worker=False)["spec"]
    assert "nvidia.com/gpu" not in scheduler["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in scheduler and "tolerations" not in scheduler
