"""dask-gateway's Kubernetes backend under the facility's policy, against the real apiserver:
``AFKubeBackend`` (in-process, its methods called as the gateway's routes call them) and
dask-gateway's own ``KubeController`` (a process) reconcile DaskClusters into pods on kwok
nodes, with a real hub (MockHub) holding the one quota.

kwok nodes run no containers: there are no Dask processes, so the scheduler's heartbeat (which
asks for its wanted worker count) is the backend's ``on_cluster_heartbeat`` called by the test,
and a full gateway + Go proxy run is not needed for what is checked here: the objects the
apiserver accepted (pods, Secrets) and the quota. The CRDs are deploy/dask/crds.yaml."""

from __future__ import annotations

import asyncio
import base64
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from jupyterhub.utils import url_path_join
from kubernetes_asyncio.config import kube_config
from traitlets.config import Config

from afdask.auth import AFUser, user_from
from afdask.kube_backend import AFKubeBackend
from afspawner import runtime
from integration.spawnkit import kube_http, make_user, new_namespace, request_spawn
from integration.test_dask_gateway import TOKEN, hub_extra
from testbed.k8s import KubeCluster
from testbed.procs import PeerProcess, free_port

pytestmark = [pytest.mark.k8s, pytest.mark.hub]

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "deploy" / "dask" / "crds.yaml"
# dask-gateway-server's wheel has no console script for it (its Helm chart runs this module)
CONTROLLER = "dask_gateway_server.backends.kubernetes.controller"
CONTROLLER_CONFIG = ROOT / "deploy" / "dask" / "controller_config.py"
ALICE_IDS = {"uid": 50001, "gid": 5063, "supplemental_gids": [5064], "access_token": "alice-tok"}
EMPTY_HEARTBEAT: dict[str, list[str]] = {
    "active_workers": [],
    "closing_workers": [],
    "closed_workers": [],
}


def facility(namespace: str, volumes: bool, per_user_cpu: int | None = None) -> dict[str, Any]:
    cms: dict[str, Any] = {"namespace": namespace, "quota": {"cpu": 13}}
    if per_user_cpu:
        cms["per_user"] = {"cpu": per_user_cpu}
    flavor: dict[str, Any] = {
        "name": "cms-coffea",
        "vos": ["cms"],
        "image": "registry.example/coffea:1",
        "cpu": 1,
        "memory": "1Gi",
        "dask": {
            "image": "registry.example/coffea-dask:1",
            "scheduler": {"cpu": 1, "memory": "1Gi"},
            "worker_sizes": {"small": {"cpu": 1, "memory": "1Gi"}},
            "max_workers": 20,
        },
    }
    fac: dict[str, Any] = {"site": {"name": "dask kube"}, "vos": {"cms": cms}}
    if volumes:
        fac["volumes"] = {
            "cvmfs": {"type": "cvmfs", "mount": "/cvmfs"},
            "ceph-user": {
                "type": "cephfs",
                "claim": "ceph-cms",
                "sub_path": "store/user/{username}",
                "mount": "/ceph/cms/store/user/{username}",
            },
            "eos": {"type": "eos", "mount": "/eos", "host_path": "/var/eos"},
            "home": {"type": "home", "mount": "/home/jovyan", "size": "1Gi"},
        }
        flavor["volumes"] = ["cvmfs", "ceph-user", "eos", "home"]
    fac["flavors"] = [flavor]
    return fac


async def install_crds(k: httpx.AsyncClient) -> None:
    for crd in yaml.safe_load_all(CRDS.read_text()):
        r = await k.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd)
        assert r.status_code in (201, 409), r.text
        name = crd["metadata"]["name"]
        for _ in range(100):
            got = await k.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            conds = got.json().get("status", {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
                break
            await asyncio.sleep(0.1)
    # the discovery of a new group may lag its CRD a moment
    for _ in range(100):
        if (await k.get("/apis/gateway.dask.org/v1alpha1")).status_code == 200:
            return
        await asyncio.sleep(0.1)


async def bound_claim(k: httpx.AsyncClient, namespace: str, claim: str) -> None:
    """A claim bound to a static hostPath volume (the test bed has no provisioner)."""
    pv = f"pv-{namespace}-{claim}"
    spec = {
        "capacity": {"storage": "1Gi"},
        "accessModes": ["ReadWriteMany"],
        "storageClassName": "",
        "hostPath": {"path": f"/tmp/{pv}"},
        "claimRef": {"namespace": namespace, "name": claim},
    }
    r = await k.post("/api/v1/persistentvolumes", json={"metadata": {"name": pv}, "spec": spec})
    assert r.status_code == 201, r.text
    body = {
        "metadata": {"name": claim},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": "",
            "volumeName": pv,
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    r = await k.post(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims", json=body)
    assert r.status_code == 201, r.text


class DaskKube:
    def __init__(self, app: Any, backend: AFKubeBackend, namespace: str, k: httpx.AsyncClient):
        self.app, self.backend, self.namespace, self.k = app, backend, namespace, k

    async def pods(self, cid: str | None = None) -> list[dict[str, Any]]:
        selector = f"gateway.dask.org/instance={self.backend.gateway_instance}"
        if cid:
            selector += f",gateway.dask.org/cluster={cid}"
        r = await self.k.get(
            f"/api/v1/namespaces/{self.namespace}/pods", params={"labelSelector": selector}
        )
        return [p for p in r.json()["items"] if not p["metadata"].get("deletionTimestamp")]

    async def wait(self, check: Any, what: str, limit: float = 90.0) -> Any:
        deadline = asyncio.get_running_loop().time() + limit
        while asyncio.get_running_loop().time() < deadline:
            got = await check()
            if got:
                return got
            await asyncio.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}")

    async def stand_in_endpoints(self) -> None:
        """The test bed's pods have loopback IPs, which Endpoints may not hold (the endpoints
        controllers fail to write them): this loop writes each scheduler Service's Endpoints
        with a routable stand-in address, as the controllers would, so dask-gateway's
        controller sees a ready scheduler. Nothing listens there (kwok runs no process)."""
        base = f"/api/v1/namespaces/{self.namespace}"
        while True:
            services = (await self.k.get(f"{base}/services")).json()["items"]
            for svc in services:
                meta = svc["metadata"]
                body = {
                    "metadata": {"name": meta["name"], "labels": meta.get("labels") or {}},
                    "subsets": [
                        {
                            "addresses": [{"ip": "10.244.0.10"}],
                            "ports": [
                                {"name": p["name"], "port": p["port"]} for p in svc["spec"]["ports"]
                            ],
                        }
                    ],
                }
                await self.k.post(f"{base}/endpoints", json=body)  # 409 once it exists
            await asyncio.sleep(0.5)

    async def user(self, name: str) -> AFUser:
        """The user as the gateway's authenticator makes them (the hub's real answer)."""
        return user_from(await self.backend.hub.user(name))

    async def start(self, user: str | AFUser, **options: str) -> str:
        if isinstance(user, str):
            user = await self.user(user)
        return await self.backend.start_cluster(user, options)

    async def heartbeat(self, cluster: str, count: int) -> None:
        await self.wait(
            lambda: asyncio.sleep(0, cluster in self.backend.clusters), f"{cluster} known"
        )
        await self.backend.on_cluster_heartbeat(cluster, {"count": count, **EMPTY_HEARTBEAT})


def ledger_cpu(vo: str) -> int:
    (rt,) = runtime.runtimes()
    return rt.ledger.usage(vo).cpu_millis


@pytest.fixture
async def dask_kube(
    af_hub: Any, k8s_cluster: KubeCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Any]:
    procs: list[PeerProcess] = []
    backends: list[AFKubeBackend] = []
    tasks: list[asyncio.Future[None]] = []
    async with kube_http(k8s_cluster) as k:
        await install_crds(k)

        async def start(volumes: bool, per_user_cpu: int | None = None, **spawner: Any) -> Any:
            namespace = await new_namespace(k8s_cluster)
            fac = facility(namespace, volumes, per_user_cpu)
            app = await af_hub(
                fac,
                spawner={"backend": "local", "uid_sources": ["auth_state"], **spawner},
                hub=hub_extra(),
            )
            facility_file = tmp_path / "gateway-facility.yaml"
            facility_file.write_text(yaml.safe_dump(fac))
            instance = f"af-{uuid.uuid4().hex[:8]}"
            env = {"KUBECONFIG": str(k8s_cluster.kubeconfig), "DASK_GATEWAY_INSTANCE": instance}
            env["DASK_CONTROLLER_ADDRESS"] = f"127.0.0.1:{free_port()}"
            argv = [sys.executable, "-m", CONTROLLER, "-f", str(CONTROLLER_CONFIG)]
            procs.append(PeerProcess("dask-kube-controller", argv, tmp_path, env))
            # KubeBackend.setup loads the default kubeconfig ($KUBECONFIG, read at import)
            monkeypatch.setattr(
                kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(k8s_cluster.kubeconfig)
            )
            c = Config()
            c.AFKubeBackend.gateway_instance = instance
            c.AFKubeBackend.facility_file = str(facility_file)
            c.AFKubeBackend.hub_api_url = url_path_join(app.hub.url, "api")
            c.AFKubeBackend.hub_api_token = TOKEN
            c.AFKubeBackend.lease_renew_period = 3600.0  # renewals: tests/unit and the local test
            backend = AFKubeBackend(config=c)
            await backend.setup(None)
            backends.append(backend)
            dk = DaskKube(app, backend, namespace, k)
            tasks.append(asyncio.ensure_future(dk.stand_in_endpoints()))
            return dk

        try:
            yield start
        finally:
            for t in tasks:
                t.cancel()
            for b in backends:
                await b.cleanup()
            for p in procs:
                await asyncio.to_thread(p.stop)
                print(p.tail(40))


async def test_cluster_pods_get_the_vos_namespace_identity_volumes_and_token(
    dask_kube: Any,
) -> None:
    env: DaskKube = await dask_kube(volumes=True, per_user_cpu=6)
    ns, k = env.namespace, env.k
    await make_user(env.app, "alice", ("cms",), ALICE_IDS)
    await bound_claim(k, ns, "ceph-cms")
    await bound_claim(k, ns, "home-alice")  # the home claim of alice's first notebook

    name = await env.start("alice", worker_size="small")
    cluster_ns, cid = name.split(".")
    assert cluster_ns == ns  # the VO's namespace
    assert ledger_cpu("cms") == 1000  # the scheduler was leased before anything was created

    # the token Secret, owned by the DaskCluster
    r = await k.get(f"/api/v1/namespaces/{ns}/secrets/dask-token-{cid}")
    assert r.status_code == 200, r.text
    secret = r.json()
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("DaskCluster", cid)
    assert base64.b64decode(secret["data"]["bearer_token"]).decode() == "alice-tok"

    # the controller runs the scheduler; kwok reports it running, the cluster becomes Running
    async def running() -> bool:
        cluster = env.backend.clusters.get(name)
        return cluster is not None and cluster.status.name == "RUNNING"

    await env.wait(running, "the cluster Running")

    # the scheduler asks for 50 workers: the user's cap (6 CPU) leaves 5
    await env.heartbeat(name, 50)
    assert ledger_cpu("cms") == 6000
    r = await k.get(f"/apis/gateway.dask.org/v1alpha1/namespaces/{ns}/daskclusters/{cid}")
    assert r.json()["spec"]["replicas"] == 5

    async def six_pods() -> list[dict[str, Any]] | None:
        pods = await env.pods(cid)
        return pods if len(pods) == 6 else None

    pods = await env.wait(six_pods, "1 scheduler + 5 worker pods")
    for pod in pods:
        spec = pod["spec"]
        assert spec["securityContext"] == {
            "runAsUser": 50001,
            "runAsGroup": 5063,
            "fsGroup": 5063,
            "supplementalGroups": [5064],
            "runAsNonRoot": True,
        }
        (container,) = spec["containers"]
        assert container["image"] == "registry.example/coffea-dask:1"
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["vol-cvmfs"]["hostPath"]["path"] == "/cvmfs"
        assert volumes["vol-eos"]["hostPath"]["path"] == "/var/eos"
        assert volumes["vol-ceph-user"]["persistentVolumeClaim"]["claimName"] == "ceph-cms"
        assert volumes["vol-home"]["persistentVolumeClaim"]["claimName"] == "home-alice"
        assert volumes["af-token"]["secret"]["secretName"] == f"dask-token-{cid}"
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        assert mounts["vol-ceph-user"]["subPath"] == "store/user/alice"
        env_vars = {e["name"]: e.get("value") for e in container["env"]}
        assert env_vars["BEARER_TOKEN_FILE"] == "/etc/af-token/bearer_token"
        assert (env_vars["NB_UID"], env_vars["AF_VO"]) == ("50001", "cms")
        assert "alice-tok" not in str(pod)  # the token only in its Secret
        assert pod["spec"].get("nodeName")  # scheduled on a kwok node

    # stopping: the controller deletes the pods, the backend releases the lease
    await env.backend.stop_cluster(name)

    async def released() -> bool:
        return ledger_cpu("cms") == 0 and not await env.pods(cid)

    await env.wait(released, "pods gone and the lease released")


async def _hold_then_fail(spawner: Any) -> None:
    """Admitted spawns hold their reservation a moment, then stop before any process."""
    await asyncio.sleep(10)
    raise RuntimeError("race test: no server needed")


async def test_notebook_spawns_and_kube_dask_scale_ups_race_for_one_quota(dask_kube: Any) -> None:
    """Four users' Kubernetes clusters run (4 schedulers: 4 of the VO's 13 CPU); then 40
    concurrent requests: 20 notebook spawns through the hub and 20 scheduler heartbeats asking
    2 to 10 workers (5 per cluster). Exactly 13 CPU are granted, and the apiserver holds
    exactly the Dask share of pods."""
    env: DaskKube = await dask_kube(volumes=False, pre_spawn_hook=_hold_then_fail)
    users = [f"u{i}" for i in range(20)]
    for i, user in enumerate(users):
        await make_user(env.app, user, ("cms",), {"uid": 51000 + i, "gid": 5063})
    clusters = [await env.start(user) for user in users[:4]]
    assert ledger_cpu("cms") == 4000

    async def running() -> bool:
        got = [env.backend.clusters.get(name) for name in clusters]
        return all(c is not None and c.status.name == "RUNNING" for c in got)

    await env.wait(running, "4 clusters Running")

    async def scale_up(name: str, count: int) -> None:
        await env.backend.on_cluster_heartbeat(name, {"count": count, **EMPTY_HEARTBEAT})

    async def spawn(user: str) -> int:
        r = await request_spawn(env.app, user, {"flavor": "cms-coffea"})
        if r.status_code == 403:
            assert "VO cms uses" in r.json()["message"], r.text
            return 0
        assert r.status_code in (201, 202), r.text
        return 1

    asks = [(clusters[i % 4], 2 * (1 + i // 4)) for i in range(20)]  # 2, 4, ..., 10 each
    spawns = [spawn(u) for u in users]
    scales = [scale_up(name, count) for name, count in asks]
    results = await asyncio.gather(*(c for pair in zip(spawns, scales, strict=True) for c in pair))
    notebooks = sum(r for r in results if r)
    workers = {name: env.backend._leased[name] for name in clusters}
    print(f"race: {notebooks} notebooks, workers {sorted(workers.values())}")
    assert 4 + notebooks + sum(workers.values()) == 13, (notebooks, workers)  # never exceeded
    assert ledger_cpu("cms") == 13_000
    dask_pods = 4 + sum(workers.values())

    # what the apiserver holds: each cluster's scheduler and granted workers, no more
    for name in clusters:
        cid = name.split(".")[1]
        replicas = (
            (
                await env.k.get(
                    f"/apis/gateway.dask.org/v1alpha1/namespaces/{env.namespace}/daskclusters/{cid}"
                )
            )
            .json()["spec"]
            .get("replicas", 0)
        )
        assert replicas == workers[name]

    async def all_pods() -> list[dict[str, Any]] | None:
        pods = await env.pods()
        return pods if len(pods) == dask_pods else None

    pods = await env.wait(all_pods, f"{dask_pods} Dask pods", limit=150)
    cpu = sum(float(p["spec"]["containers"][0]["resources"]["requests"]["cpu"]) for p in pods)
    assert cpu == dask_pods <= 13
    await asyncio.sleep(1.0)
    assert len(await env.pods()) == dask_pods  # and no more appear
    for name in clusters:
        await env.backend.stop_cluster(name)
