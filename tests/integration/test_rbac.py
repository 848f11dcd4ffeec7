"""The hub on the real apiserver with the token of deploy/rbac.yaml's ServiceAccount, not the
admin's: every spawn, poll, token, sweep, stop and VO-quota path passes with exactly those
permissions, and a permission taken away gives an error that names it."""

from __future__ import annotations

import asyncio
import base64
import copy
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from afspawner.backends import LaunchFailed
from afspawner.backends.kubernetes import KubernetesBackend
from afspawner.kube.client import shared_api_client
from afspawner.kube.permissions import SERVICE_ACCOUNT
from afspawner.kube.reconcile import QUOTA_NAME, reconcile_vo_namespaces
from afspawner.loader import load_facility_file
from afspawner.manifests import PodSettings, make_objects
from afspawner.plan import UserIdentity
from afspawner.policy import SpawnOptions, UserContext, resolve
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
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RBAC = "/apis/rbac.authorization.k8s.io/v1"
PLACES = {  # kind → (API prefix, resource, namespaced)
    "Namespace": ("/api/v1", "namespaces", False),
    "ServiceAccount": ("/api/v1", "serviceaccounts", True),
    "Role": (RBAC, "roles", True),
    "RoleBinding": (RBAC, "rolebindings", True),
    "ClusterRole": (RBAC, "clusterroles", False),
    "ClusterRoleBinding": (RBAC, "clusterrolebindings", False),
}
SWEEP = 1.0


def _collection(obj: dict[str, Any]) -> str:
    prefix, resource, namespaced = PLACES[obj["kind"]]
    ns = f"/namespaces/{obj['metadata']['namespace']}" if namespaced else ""
    return f"{prefix}{ns}/{resource}"


def _url(obj: dict[str, Any]) -> str:
    return f"{_collection(obj)}/{obj['metadata']['name']}"


def deploy_objects(name: str, hub_ns: str, vo_ns: dict[str, str] | None = None) -> list[Any]:
    """The objects of ``deploy/<name>`` for a hub in ``hub_ns``: its namespace and the example
    VO namespaces replaced, cluster-scoped names made unique (one cluster serves all tests)."""
    moved = {"jupyterhub": hub_ns, **(vo_ns or {})}
    objs = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    out = []
    for obj in map(copy.deepcopy, objs):
        meta = obj["metadata"]
        if obj["kind"] == "Namespace":
            meta["name"] = moved[meta["name"]]
        elif obj["kind"].startswith("Cluster"):
            meta["name"] = f"{meta['name']}-{hub_ns}"
        if "namespace" in meta:
            meta["namespace"] = moved[meta["namespace"]]
        for subject in obj.get("subjects", []):
            subject["namespace"] = moved[subject["namespace"]]
        ref = obj.get("roleRef")
        if ref and ref["kind"] == "ClusterRole":
            ref["name"] = f"{ref['name']}-{hub_ns}"
        out.append(obj)
    return out


async def apply(k: httpx.AsyncClient, objs: list[dict[str, Any]], dry_run: bool = False) -> None:
    params = {"dryRun": "All"} if dry_run else {}
    for obj in objs:
        r = await k.post(_collection(obj), params=params, json=obj)
        assert r.status_code == 201, f"{obj['kind']} {obj['metadata']['name']}: {r.text}"


async def token_for(k: httpx.AsyncClient, ns: str) -> str:
    """A TokenRequest for the hub's ServiceAccount (what the kubelet mounts in the hub pod)."""
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600},
    }
    r = await k.post(f"/api/v1/namespaces/{ns}/serviceaccounts/{SERVICE_ACCOUNT}/token", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["status"]["token"])


def write_kubeconfig(cluster: KubeCluster, token: str, path: Path) -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "hub",
        "clusters": [
            {
                "name": "af",
                "cluster": {
                    "server": cluster.server,
                    "certificate-authority": str(cluster.ca_path),
                },
            }
        ],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "hub", "context": {"cluster": "af", "user": SERVICE_ACCOUNT}}],
    }
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return path


def as_hub(cluster: KubeCluster, token: str) -> httpx.AsyncClient:
    client = kube_http(cluster)
    client.headers["Authorization"] = f"Bearer {token}"
    return client


async def allowed(cluster: KubeCluster, token: str, verb: str, resource: str, ns: str) -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": verb, "resource": resource, "namespace": ns}},
    }
    async with as_hub(cluster, token) as k:
        r = await k.post("/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", json=review)
    assert r.status_code == 201, r.text
    return bool(r.json()["status"]["allowed"])


class HubAccount:
    """The ServiceAccount and RBAC of deploy/ in a fresh namespace, and a kubeconfig with its
    token."""

    def __init__(self, ns: str, objs: list[dict[str, Any]], token: str, kubeconfig: Path):
        self.ns, self.objs, self.token, self.kubeconfig = ns, objs, token, kubeconfig


@pytest.fixture
async def account(k8s_cluster: KubeCluster, tmp_path: Path) -> AsyncIterator[HubAccount]:
    ns = await new_namespace(k8s_cluster)
    objs = deploy_objects("rbac.yaml", ns)
    async with kube_http(k8s_cluster) as k:
        await apply(k, objs, dry_run=True)  # the apiserver accepts every object
        await apply(k, objs)
        token = await token_for(k, ns)
    kubeconfig = write_kubeconfig(k8s_cluster, token, tmp_path / "hub-kubeconfig")

    async def granted() -> bool:  # the apiserver's RBAC cache follows new objects quickly
        return await allowed(k8s_cluster, token, "watch", "pods", ns) and await allowed(
            k8s_cluster, token, "watch", "nodes", ""
        )

    await _until(granted, 10, "the new Role and ClusterRole in force")
    yield HubAccount(ns, objs, token, kubeconfig)
    async with kube_http(k8s_cluster) as k:
        for obj in objs:
            if obj["kind"].startswith("Cluster"):
                await k.delete(_url(obj))


def _home_facility() -> dict[str, Any]:
    fac = facility()
    fac["volumes"]["home"] = {"type": "home", "mount": "/home/jovyan", "size": "1Gi"}
    fac["flavors"].append({**fac["flavors"][0], "name": "cms-home", "default": False})
    fac["flavors"][-1]["volumes"] = ["cvmfs", "home"]
    return fac


async def _hub(af_hub: Any, account: HubAccount, fac: dict[str, Any]) -> Any:
    opts = {
        "kubeconfig": str(account.kubeconfig),
        "namespace": account.ns,
        "unschedulable_grace": 1.0,
        "sweep_interval": SWEEP,
        "sweep_grace": SWEEP,
    }
    return await af_hub(fac, spawner={"backend_options": opts})


async def _secret_token(cluster: KubeCluster, ns: str, name: str) -> str | None:
    async with kube_http(cluster) as k:
        r = await k.get(f"/api/v1/namespaces/{ns}/secrets/{name}")
    if r.status_code == 404:
        return None
    data = r.json().get("data") or {}
    return base64.b64decode(next(iter(data.values()))).decode() if data else None


async def test_the_z2jh_configmap_is_accepted_by_the_apiserver(
    k8s_cluster: KubeCluster, account: HubAccount
) -> None:
    path = DEPLOY.parent / "examples" / "z2jh" / "facility-configmap.yaml"
    cm = yaml.safe_load(path.read_text())
    cm["metadata"]["namespace"] = account.ns
    async with kube_http(k8s_cluster) as k:
        r = await k.post(
            f"/api/v1/namespaces/{account.ns}/configmaps", params={"dryRun": "All"}, json=cm
        )
    assert r.status_code == 201, r.text


async def _spawn_error(app: Any, r: httpx.Response, user: str) -> str:
    """What the user is told of a failed spawn: the answer itself, or the spawn's error."""
    if r.status_code == 500:
        return str(r.json()["message"])
    with pytest.raises(Exception) as failed:
        await spawn_result(app, user)
    return str(failed.value)


async def _until(check: Any, within: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"not within {within:.0f}s: {what}")


async def test_the_token_is_the_service_accounts_not_the_admins(
    k8s_cluster: KubeCluster, account: HubAccount
) -> None:
    async with as_hub(k8s_cluster, account.token) as k:
        r = await k.post(
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
        assert r.status_code == 201, r.text
        user = r.json()["status"]["userInfo"]["username"]
        assert user == f"system:serviceaccount:{account.ns}:{SERVICE_ACCOUNT}"
        assert (await k.get("/api/v1/namespaces/kube-system/secrets")).status_code == 403
        assert (await k.get("/api/v1/pods")).status_code == 403  # nothing cluster-wide
        assert (await k.get("/api/v1/nodes")).status_code == 200
    assert await allowed(k8s_cluster, account.token, "update", "secrets", account.ns)
    assert not await allowed(k8s_cluster, account.token, "get", "secrets", account.ns)
    assert not await allowed(k8s_cluster, account.token, "create", "pods", "default")


async def test_every_path_passes_with_the_service_account(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub, account: HubAccount
) -> None:
    ns = account.ns
    app = await _hub(af_hub, account, _home_facility())
    state = {"uid": 50001, "gid": 5063, "vos": ["cms"], "access_token": "token-1"}
    user = await make_user(app, "rita", auth_state=state)
    # spawn: claims, pod, Secrets (create), informers (list, watch)
    r = await request_spawn(app, "rita", {"flavor": "cms-el9"})
    assert r.status_code in (201, 202), r.text
    await spawn_result(app, "rita")
    spawner = app.users["rita"].spawners[""]
    rt = spawner.runtime
    assert [p["metadata"]["name"] for p in await pods_in(k8s_cluster, ns)] == ["jupyter-rita"]
    assert await _secret_token(k8s_cluster, ns, "jupyter-rita-token") == "token-1"
    # poll, and the refreshed token rewritten (secrets update)
    await user.save_auth_state({**state, "access_token": "token-2"})
    assert await spawner.poll() is None
    assert await _secret_token(k8s_cluster, ns, "jupyter-rita-token") == "token-2"
    # find
    assert await rt.backend.find("rita", "") == {"namespace": ns, "pod": "jupyter-rita"}
    # the sweep (list, delete) removes an orphan made behind the hub's back
    fac = rt.facility
    ghost = UserContext("ghost", frozenset(), ("cms",))
    plan = resolve(fac, ghost, SpawnOptions("cms-el9"), UserIdentity("ghost", 50002, 5063))
    objs = make_objects(plan, PodSettings(namespace=ns, hub_env={"JUPYTERHUB_API_TOKEN": "x"}))
    async with kube_http(k8s_cluster) as k:
        for kind, obj in (("pods", objs.pod), ("secrets", objs.secret)):
            r = await k.post(f"/api/v1/namespaces/{ns}/{kind}", json=obj)
            assert r.status_code == 201, r.text

    async def swept() -> bool:
        names = {p["metadata"]["name"] for p in await pods_in(k8s_cluster, ns)}
        return (
            names == {"jupyter-rita"}
            and await _secret_token(k8s_cluster, ns, "jupyter-ghost") is None
        )

    await _until(swept, 30, "the orphan swept with the hub's token")
    assert await rt.reconcile() == 0 and rt.sweeps >= 2
    # stop (delete)
    await stop_server(app, "rita")
    assert await pods_in(k8s_cluster, ns) == []
    # poll and stop without saved state: find + delete of leftovers
    r = await request_spawn(app, "rita", {"flavor": "cms-el9"})
    assert r.status_code in (201, 202), r.text
    await spawn_result(app, "rita")
    spawner.clear_state()  # as after a hub killed before it saved the state
    await stop_server(app, "rita")  # JupyterHub: poll() says stopped → find + delete leftovers
    assert await pods_in(k8s_cluster, ns) == []
    # a home claim (persistentvolumeclaims create): no provisioner here, so the pod stays
    # Unschedulable and the spawn fails for that reason, never for a permission
    r = await request_spawn(app, "rita", {"flavor": "cms-home"})
    assert r.status_code in (201, 202, 500), r.text
    try:
        await spawn_result(app, "rita")
    except Exception as exc:
        assert "Unschedulable" in str(exc) and "RBAC" not in str(exc), str(exc)
    else:  # where a provisioner binds the claim, the server runs
        await stop_server(app, "rita")
    async with kube_http(k8s_cluster) as k:
        claim = await k.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/home-rita")
    assert claim.status_code == 200
    assert len(rt.ledger) == 0


async def test_vo_namespaces_with_the_vo_rbac(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub, account: HubAccount, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    vo_ns = {"af-cms": f"af-cms-{tag}", "af-dune": f"af-dune-{tag}"}
    objs = deploy_objects("rbac-vo-namespaces.yaml", account.ns, vo_ns)
    async with kube_http(k8s_cluster) as k:
        await apply(k, [o for o in objs if o["kind"] != "RoleBinding"], dry_run=True)
        await apply(k, objs)

    async def granted() -> bool:
        token, dune = account.token, vo_ns["af-dune"]
        return await allowed(k8s_cluster, token, "create", "namespaces", "") and await allowed(
            k8s_cluster, token, "update", "resourcequotas", dune
        )

    await _until(granted, 10, "the VO roles in force")
    try:
        fac = facility()
        fac["vos"]["dune"]["namespace"] = vo_ns["af-dune"]
        fac["vos"]["cms"]["namespace"] = vo_ns["af-cms"]
        app = await _hub(af_hub, account, fac)
        await make_user(app, "bob", auth_state={"uid": 50002, "gid": 5063, "vos": ["dune"]})
        r = await request_spawn(app, "bob", {"flavor": "dune-sl7"})
        assert r.status_code in (201, 202), r.text
        await spawn_result(app, "bob")
        [pod] = await pods_in(k8s_cluster, vo_ns["af-dune"])
        assert pod["metadata"]["name"] == "jupyter-bob"
        async with kube_http(k8s_cluster) as k:
            path = f"/api/v1/namespaces/{vo_ns['af-dune']}/resourcequotas/{QUOTA_NAME}"
            assert (await k.get(path)).json()["spec"]["hard"]["count/pods"] == "4"
        # the update path of the quota (get, update) with the hub's token
        fac["vos"]["dune"]["quota"]["servers"] = 3
        api = await shared_api_client(str(account.kubeconfig))
        touched = await reconcile_vo_namespaces(api, load_facility_file_from(fac, tmp_path))
        assert sorted(touched) == sorted(vo_ns.values())
        async with kube_http(k8s_cluster) as k:
            assert (await k.get(path)).json()["spec"]["hard"]["count/pods"] == "3"
        await stop_server(app, "bob")
        assert await pods_in(k8s_cluster, vo_ns["af-dune"]) == []
    finally:
        async with kube_http(k8s_cluster) as k:
            for obj in objs:
                if obj["kind"].startswith("Cluster"):
                    await k.delete(_url(obj))


async def _without(k8s_cluster: KubeCluster, account: HubAccount, verb: str, resource: str) -> None:
    """Take ``verb`` on ``resource`` out of the hub's Role; wait until the apiserver says so."""
    [role] = [o for o in account.objs if o["kind"] == "Role"]
    role = copy.deepcopy(role)
    for rule in role["rules"]:
        if resource in rule["resources"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != verb]
    async with kube_http(k8s_cluster) as k:
        r = await k.put(_url(role), json=role)
        assert r.status_code == 200, r.text

    async def refused() -> bool:
        return not await allowed(k8s_cluster, account.token, verb, resource, account.ns)

    await _until(refused, 10, f"{verb} {resource} refused")


async def test_a_missing_permission_is_named_in_the_error(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub, account: HubAccount
) -> None:
    ns = account.ns
    await _without(k8s_cluster, account, "create", "secrets")
    app = await _hub(af_hub, account, facility())
    await make_user(app, "sam", auth_state={"uid": 50003, "gid": 5063, "vos": ["cms"]})
    r = await request_spawn(app, "sam", {"flavor": "cms-el9"})
    assert r.status_code in (201, 202, 500), r.text
    message = await _spawn_error(app, r, "sam")
    expected = (
        f"Kubernetes refused the server: the hub's ServiceAccount {SERVICE_ACCOUNT} "
        f"(namespace {ns}) may not create secrets in namespace {ns} (Kubernetes RBAC"
    )
    assert expected in message, message
    assert "grant it as deploy/rbac.yaml does" in message
    assert await pods_in(k8s_cluster, ns) == []  # the pod made before the refusal is removed


async def test_a_missing_cluster_permission_fails_setup_at_once(
    k8s_cluster: KubeCluster, account: HubAccount, tmp_path: Path
) -> None:
    [binding] = [o for o in account.objs if o["kind"] == "ClusterRoleBinding"]
    async with kube_http(k8s_cluster) as k:
        assert (await k.delete(_url(binding))).status_code == 200

    async def refused() -> bool:
        async with as_hub(k8s_cluster, account.token) as k:
            return (await k.get("/api/v1/nodes")).status_code == 403

    await _until(refused, 10, "nodes refused")
    # a kubeconfig of its own: a new shared client, so new informers
    kubeconfig = write_kubeconfig(k8s_cluster, account.token, tmp_path / "again")
    fac = load_facility_file_from(facility(), tmp_path)
    backend = KubernetesBackend.create(
        fac, {"namespace": account.ns, "kubeconfig": str(kubeconfig)}
    )
    assert isinstance(backend, KubernetesBackend)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(LaunchFailed) as failed:
            await backend.setup()
        assert loop.time() - started < 20  # not the 60 s sync timeout
        assert (
            f"Kubernetes refused the hub's setup: the hub's ServiceAccount {SERVICE_ACCOUNT} "
            f"(namespace {account.ns}) may not list nodes at the cluster scope"
        ) in failed.value.message
    finally:
        for group in (getattr(backend, "pods", None), getattr(backend, "events", None)):
            for informer in group.members.values() if group is not None else ():
                await informer.stop()
        if backend.nodes is not None:
            await backend.nodes.stop()


def load_facility_file_from(fac: dict[str, Any], where: Path) -> Any:
    path = where / "facility.yaml"
    path.write_text(yaml.safe_dump(fac))
    return load_facility_file(path)
