"""A real dask-gateway-server (local backend, its Go proxy) authenticated through a real hub
(MockHub) and reserving workers in the hub's quota ledger: a user creates a cluster, scales
it, computes a sum over a dask.array on workers given their identity and VO; another VO's user
cannot use the first VO's options; forged options, 10,000 workers and another user's cluster
are refused with clear messages. The processes run as the gateway's user here (the
interpreter is not reachable by other uids on this machine); the uid switch of
``AFLocalBackend`` is tested with a real process in tests/unit/test_dask_backend.py."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import httpx

# loaded now, not by pytest's terminal summary after the dask client's threads ran: that late
# import met CPython 3.11.7's "AST constructor recursion depth mismatch" SystemError
import hypothesis  # noqa: F401
import pytest
import yaml
from jupyterhub.utils import url_path_join

from afspawner import runtime
from afspawner.daskpolicy import gateway_env
from integration.spawnkit import make_user, request_spawn
from testbed.dask_gateway import TOKEN, GatewayProcess, hub_extra

pytestmark = [
    pytest.mark.hub,
    # dask_gateway.Gateway.__del__ closes a client closed already by its `with` block and
    # raises from the stopped loop (an upstream client bug, harmless here)
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

ALICE_IDS = {
    "uid": 50001,
    "gid": 5063,
    "supplemental_gids": [5064],
    "access_token": "alice-token-1",
}
FACILITY: dict[str, Any] = {
    "site": {"name": "dask test"},
    "vos": {
        # 1 scheduler + 3 small workers
        "cms": {"display": "CMS", "quota": {"cpu": 4, "memory": "8Gi"}},
        "atlas": {"display": "ATLAS", "quota": {"cpu": 4}},
    },
    "flavors": [
        {
            "name": "cms-nb",
            "vos": ["cms"],
            "image": "local",
            "cpu": 1,
            "memory": "1Gi",
            "env": {"EXPERIMENT": "cms"},
            "dask": {
                "scheduler": {"cpu": 1, "memory": "1Gi"},
                "worker_sizes": {
                    "small": {"cpu": 1, "memory": "1Gi"},
                    "large": {"cpu": 2, "memory": "2Gi"},
                },
                "max_workers": 50,
            },
        },
        {
            "name": "atlas-nb",
            "vos": ["atlas"],
            "image": "local",
            "cpu": 1,
            "memory": "1Gi",
            "dask": {"worker_sizes": {"medium": {"cpu": 1, "memory": "1Gi"}}},
        },
    ],
}


@pytest.fixture
async def dask_setup(af_hub: Any, tmp_path: Path) -> Any:
    tmp_path.chmod(0o755)  # the clusters' working directories live below, owned by the user
    app = await af_hub(
        FACILITY,
        spawner={"backend": "local", "uid_sources": ["auth_state"]},
        hub=hub_extra(),
    )
    await make_user(app, "alice", ("cms",), ALICE_IDS)
    await make_user(app, "bob", ("atlas",), {"uid": 50002, "gid": 5070})
    await make_user(app, "carol", ("cms",), {"uid": 50003, "gid": 5063})
    facility_file = tmp_path / "gateway-facility.yaml"
    facility_file.write_text(yaml.safe_dump(FACILITY))
    gateway = GatewayProcess(
        tmp_path,
        url_path_join(app.hub.url, "api"),
        TOKEN,
        facility_file,
        backend="afdask.backends.AFUnsafeLocalBackend",
        renew=1.0,
    )
    try:
        await asyncio.to_thread(gateway.wait_ready)
        yield app, gateway
    finally:
        await asyncio.to_thread(gateway.stop)
        print(gateway.log(80))


def _ledger_cpu(vo: str) -> int:
    (rt,) = runtime.runtimes()
    return rt.ledger.usage(vo).cpu_millis


def _gateway(gw: GatewayProcess, token: str) -> Any:
    from dask_gateway import Gateway, JupyterHubAuth

    return Gateway(gw.address, proxy_address=gw.proxy_address, auth=JupyterHubAuth(token))


def alice_session(gw: GatewayProcess, token: str) -> dict[str, Any]:
    """What a user does in a notebook (synchronous dask-gateway client, in a thread)."""
    import dask.array as da
    from distributed import Client

    out: dict[str, Any] = {}
    with _gateway(gw, token) as gateway:
        opts = gateway.cluster_options()
        out["fields"] = {k: sorted(opts._fields[k].options) for k in opts._fields}
        opts.worker_size = "small"
        cluster = gateway.new_cluster(opts, shutdown_on_close=False)
        out["name"] = cluster.name
        cluster.scale(2)
        with Client(cluster) as client:
            client.wait_for_workers(2, timeout=120)
            out["sum"] = float(da.ones((1000, 1000), chunks=(250, 250)).sum().compute())
            ids = client.run(lambda: (os.environ.get("NB_UID"), os.environ.get("NB_GID")))
            out["ids"] = sorted(set(ids.values()))
            envs = client.run(lambda: (os.environ.get("AF_VO"), os.environ.get("EXPERIMENT")))
            out["env"] = sorted(set(envs.values()))
            out["token"] = sorted(
                set(client.run(lambda: Path(os.environ["BEARER_TOKEN_FILE"]).read_text()).values())
            )
        cluster.close()  # the client object only: shutdown_on_close=False
    return out


def read_tokens(gw: GatewayProcess, token: str, name: str) -> list[str]:
    with _gateway(gw, token) as gateway:
        cluster = gateway.connect(name, shutdown_on_close=False)
        with cluster.get_client() as client:
            tokens = sorted(
                set(client.run(lambda: Path(os.environ["BEARER_TOKEN_FILE"]).read_text()).values())
            )
        cluster.close()
    return tokens


def scale_far(gw: GatewayProcess, token: str, name: str) -> tuple[str, int]:
    with _gateway(gw, token) as gateway:
        cluster = gateway.connect(name, shutdown_on_close=False)
        try:
            cluster.scale(10_000)
        except Exception as exc:
            message = str(exc)
        else:
            message = "no error"
        with cluster.get_client() as client:  # the cluster grows to the allowed size
            client.wait_for_workers(3, timeout=120)
            workers = len(client.scheduler_info()["workers"])
        cluster.close()  # the client object only: shutdown_on_close=False
        return message, workers


def expect_error(fn: Any) -> str:
    try:
        fn()
    except Exception as exc:
        return str(exc)
    return "no error"


async def test_a_cluster_under_the_facilitys_policy_and_quota(dask_setup: Any) -> None:
    app, gw = dask_setup
    alice = app.users["alice"].new_api_token()
    bob = app.users["bob"].new_api_token()

    result = await asyncio.to_thread(alice_session, gw, alice)
    assert result["fields"] == {
        "flavor": ["cms-nb"],
        "vo": ["cms"],
        "worker_size": ["large", "small"],
    }
    assert result["sum"] == 1_000_000.0
    # the user's identity from the hub (the processes switch to it with AFLocalBackend, see
    # test_dask_backend.py: here the interpreter lives below /root, so they cannot)
    assert result["ids"] == [("50001", "5063")]
    assert result["env"] == [("cms", "cms")]
    assert result["token"] == ["alice-token-1"]  # the user's bearer token, in a file
    name = result["name"]
    # the hub's ledger holds the scheduler and two workers, next to the notebook servers
    assert _ledger_cpu("cms") == 3000

    # 10,000 workers: scaled to what the VO's quota allows, with the reason
    message, workers = await asyncio.to_thread(scale_far, gw, alice, name)
    assert "VO cms uses" in message and "3 of the 50 workers" in message, message
    assert workers == 3
    assert _ledger_cpu("cms") == 4000
    # the hub's sweep (the ledger made equal to its servers) keeps the live lease
    (rt,) = runtime.runtimes()
    await rt.reconcile()
    assert _ledger_cpu("cms") == 4000
    # the ledger loses the lease (as after a hub restart): the gateway's renewal restores it
    rt.ledger.release("alice", f"dask:{name}")
    assert _ledger_cpu("cms") == 0
    for _ in range(100):
        if _ledger_cpu("cms") == 4000:
            break
        await asyncio.sleep(0.1)
    assert _ledger_cpu("cms") == 4000
    # one quota: a notebook server of the VO does not fit any more
    r = await request_spawn(app, "carol", {"flavor": "cms-nb"})
    assert r.status_code == 403, r.text
    assert r.json()["message"].startswith("VO cms uses 4/4 CPU"), r.text

    # bob (ATLAS) cannot use the CMS options, nor alice's cluster
    def bob_cms() -> None:
        with _gateway(gw, bob) as gateway:
            gateway.new_cluster(flavor="cms-nb")

    refused = await asyncio.to_thread(expect_error, bob_cms)
    assert "flavor 'cms-nb' is for members of cms; your VOs: atlas" in refused, refused

    # forged options, past the client's own checks: the gateway's API refuses them
    for body, reason in (
        ({"image": "evil:latest"}, "unknown cluster option(s) 'image'"),
        ({"flavor": "cms-nb"}, "flavor 'cms-nb' is for members of cms; your VOs: atlas"),
        ({"vo": "cms"}, "cannot charge a Dask cluster of flavor 'atlas-nb' to VO 'cms'"),
        ({"worker_size": "large"}, "flavor 'atlas-nb' has no worker size 'large'"),
    ):
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(
                f"{gw.address}/api/v1/clusters/",
                json={"cluster_options": body},
                headers={"Authorization": f"jupyterhub {bob}"},
            )
        assert r.status_code == 422, r.text
        assert reason in r.json()["error"], (body, r.text)

    async with httpx.AsyncClient(timeout=30) as http:
        bob_auth = {"Authorization": f"jupyterhub {bob}"}
        r = await http.get(f"{gw.address}/api/v1/clusters/{name}", headers=bob_auth)
        assert r.status_code == 403 and "lacks permissions" in r.json()["error"], r.text
        r = await http.post(
            f"{gw.address}/api/v1/clusters/{name}/scale", json={"count": 1}, headers=bob_auth
        )
        assert r.status_code == 403 and "lacks permissions" in r.json()["error"], r.text
        r = await http.delete(f"{gw.address}/api/v1/clusters/{name}", headers=bob_auth)
        assert r.status_code == 403, r.text
    assert _ledger_cpu("cms") == 4000  # alice's cluster is untouched

    # a user token cannot reach the lease API; only the gateway's service can
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.put(
            url_path_join(app.hub.url, "api/af/dask/leases/alice", name),
            json={"workers": 1000},
            headers={"Authorization": f"token {bob}"},
        )
    assert r.status_code == 403, r.text

    # the hub refreshes alice's token: the gateway's renewal rewrites the clusters' file
    await app.users["alice"].save_auth_state({**ALICE_IDS, "access_token": "alice-token-2"})
    tokens: list[str] = []
    for _ in range(50):
        tokens = await asyncio.to_thread(read_tokens, gw, alice, name)
        if tokens == ["alice-token-2"]:
            break
        await asyncio.sleep(0.2)
    assert tokens == ["alice-token-2"]
    assert "alice-token" not in gw.log(2000)  # tokens are never logged

    # inside a server: the spawner's environment makes Gateway() work without arguments
    env = {
        **os.environ,
        **gateway_env({"address": gw.address, "proxy_address": gw.proxy_address}),
        "JUPYTERHUB_API_TOKEN": alice,
    }
    code = "from dask_gateway import Gateway\nprint([c.name for c in Gateway().list_clusters()])"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, env=env, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert stdout.decode().strip() == repr([name])

    # stopping the cluster releases its lease
    def stop() -> None:
        with _gateway(gw, alice) as gateway:
            gateway.stop_cluster(name)

    await asyncio.to_thread(stop)
    for _ in range(100):
        if _ledger_cpu("cms") == 0:
            break
        await asyncio.sleep(0.2)
    assert _ledger_cpu("cms") == 0


RACE_FACILITY: dict[str, Any] = {
    "vos": {"cms": {"quota": {"cpu": 13}}},
    "flavors": [
        {
            "name": "cms-nb",
            "vos": ["cms"],
            "image": "local",
            "cpu": 1,
            "memory": "1Gi",
            "dask": {
                "scheduler": {"cpu": 1, "memory": "1Gi"},
                "worker_sizes": {"small": {"cpu": 1, "memory": "1Gi"}},
            },
        }
    ],
}


async def _hold_then_fail(spawner: Any) -> None:
    """Admitted spawns hold their reservation a moment, then stop before any process."""
    await asyncio.sleep(4)
    raise RuntimeError("race test: no server needed")


async def test_notebook_spawns_and_dask_scale_ups_race_for_one_quota(af_hub: Any) -> None:
    """40 concurrent requests (20 notebook spawns, 20 clusters asking 3 workers each, through
    the hub's Dask API as the gateway calls it) against a VO quota of 13 CPU."""
    app = await af_hub(
        RACE_FACILITY,
        spawner={
            "backend": "local",
            "uid_sources": ["auth_state"],
            "pre_spawn_hook": _hold_then_fail,
        },
        hub=hub_extra(),
    )
    users = [f"u{i}" for i in range(20)]
    for i, name in enumerate(users):
        await make_user(app, name, ("cms",), {"uid": 51000 + i, "gid": 5063})

    async def lease(http: httpx.AsyncClient, user: str) -> int:
        r = await http.put(
            url_path_join(app.hub.url, "api/af/dask/leases", user, f"c-{user}"),
            json={"options": {"flavor": "cms-nb"}, "workers": 3},
            headers={"Authorization": f"token {TOKEN}"},
        )
        if r.status_code == 403:
            assert "no room for a Dask scheduler" in r.json()["message"], r.text
            return 0
        assert r.status_code == 200, r.text
        return 1 + int(r.json()["workers"])  # CPU: the scheduler and the granted workers

    async def spawn(user: str) -> int:
        r = await request_spawn(app, user, {"flavor": "cms-nb"})
        if r.status_code == 403:
            assert "VO cms uses" in r.json()["message"], r.text
            return 0
        assert r.status_code in (201, 202), r.text
        return 1

    async with httpx.AsyncClient(timeout=60) as http:
        results = await asyncio.gather(
            *(coro for u in users for coro in (lease(http, u), spawn(u)))
        )
    cpu = sum(results)
    assert cpu == 13, results  # the quota is used up, never exceeded
    assert _ledger_cpu("cms") == 13_000
    # which kind wins depends on arrival order; the refused ones got the ledger's message
