"""What a user feels starting a Dask cluster: ours, dask-gateway's own local backend, a floor.

Timed from the user's side, with the synchronous ``dask_gateway`` client a notebook uses:
``new_cluster()`` (scheduler up), then ``scale(1)`` and ``Client.wait_for_workers(1)`` (the
first worker ready), then ``scale(N)`` and ``wait_for_workers(N)``, then ``shutdown()``.
Contenders, in alternating order from one round to the next:

* ``ours``: a real ``dask-gateway-server`` (its Go proxy included) with
  ``afdask.backends.AFUnsafeLocalBackend``: options from the facility file, a lease in the
  hub's quota ledger at create and at every scale, the user's bearer token in a file, the
  user authenticated by a real hub (JupyterHub's MockHub with AFSpawner and
  ``afspawner.daskapi``, in this process), set up as tests/integration/test_dask_gateway.py;
* ``peer``: the same ``dask-gateway-server`` with its own ``UnsafeLocalBackend`` and
  ``SimpleAuthenticator`` (a shared password), no policy;
* ``floor``: the same ``dask scheduler`` and ``dask worker`` commands started directly
  (plain TCP, no TLS, no gateway), the worker awaited the same way.

Both gateways run the same ``dask`` commands, with the same heartbeat (2 s), timeouts and log
level. The Kubernetes backend is not measured here (it was being built when this was written).

    .venv/bin/python benchmarks/bench_dask_cluster.py [--repeat 5 --workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import _common

_common.use_test_bed()

import yaml  # noqa: E402
from jupyterhub.tests.mocking import MockHub  # noqa: E402
from jupyterhub.utils import url_path_join  # noqa: E402
from traitlets.config import Config  # noqa: E402

from afspawner.runtime import clear_runtimes, runtimes  # noqa: E402
from integration.spawnkit import make_user  # noqa: E402
from testbed.dask_gateway import TOKEN, GatewayProcess, hub_extra  # noqa: E402
from testbed.hub import hub_config  # noqa: E402
from testbed.procs import LOOPBACK, PeerProcess, free_port  # noqa: E402

DASK = str(Path(sys.executable).parent / "dask")
USER = "alice"
PEER_PASSWORD = "bench-password"  # noqa: S105 - a throwaway password of a loopback peer
WORKER_MEMORY = "1 G"


def facility(workers: int) -> dict[str, Any]:
    """One VO whose quota fits the scheduler and ``workers`` small workers, with room."""
    return {
        "site": {"name": "dask benchmark"},
        "vos": {"cms": {"quota": {"cpu": 2 * (workers + 1), "memory": "64Gi"}}},
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
                    "max_workers": 50,
                },
            }
        ],
    }


PEER_CONFIG = """\
c.DaskGateway.address = {api!r}
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.DaskGateway.log_level = "DEBUG"
c.SimpleAuthenticator.password = {password!r}
c.Proxy.address = {proxy!r}
c.Proxy.tcp_address = {proxy!r}
c.LocalBackend.clusters_directory = {clusters!r}
c.LocalClusterConfig.scheduler_cmd = [{dask!r}, "scheduler"]
c.LocalClusterConfig.worker_cmd = [{dask!r}, "worker"]
c.DBBackendBase.cluster_heartbeat_period = 2
c.DBBackendBase.worker_start_timeout = 120
c.DBBackendBase.cluster_start_timeout = 120
"""


class PeerGateway(GatewayProcess):
    """dask-gateway-server as its documentation sets it up locally (no hub, no policy)."""

    def __init__(self, tmp: Path) -> None:
        api, proxy = free_port(), free_port()  # never the same port twice
        self.address = f"http://{LOOPBACK}:{proxy}"
        self.proxy_address = f"gateway://{LOOPBACK}:{proxy}"
        clusters = tmp / "clusters"
        clusters.mkdir(mode=0o755, exist_ok=True)
        config = tmp / "dask_gateway_config.py"
        config.write_text(
            PEER_CONFIG.format(
                api=f"{LOOPBACK}:{api}",
                proxy=f"{LOOPBACK}:{proxy}",
                password=PEER_PASSWORD,
                clusters=str(clusters),
                dask=DASK,
            )
        )
        exe = str(Path(sys.executable).parent / "dask-gateway-server")
        self.proc = PeerProcess("dask-gateway-peer", [exe, "-f", str(config)], tmp)


@dataclass
class Row:
    impl: str
    what: str
    scheduler_s: list[float] = field(default_factory=list)
    first_worker_s: list[float] = field(default_factory=list)
    n_workers_s: list[float] = field(default_factory=list)
    shutdown_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


Times = tuple[float, float, float, float]  # scheduler, first worker, N workers, shutdown


def gateway_round(
    gw: GatewayProcess, auth: Any, n: int, at_n: Callable[[], None] | None = None
) -> Times:
    """One user's session through a gateway: the times are measured as the user sees them;
    ``at_n`` runs (untimed) while the N workers run."""
    from dask_gateway import Gateway

    with Gateway(gw.address, proxy_address=gw.proxy_address, auth=auth) as gateway:
        t0 = time.perf_counter()
        cluster = gateway.new_cluster()
        t_sched = time.perf_counter()
        cluster.scale(1)
        client = cluster.get_client(set_as_default=False)
        client.wait_for_workers(1, timeout=120)
        t_first = time.perf_counter()
        cluster.scale(n)
        client.wait_for_workers(n, timeout=120)
        t_n = time.perf_counter()
        if at_n is not None:
            at_n()
        client.close()
        cluster.shutdown()
        t_stop = time.perf_counter()
        name = cluster.name
        cluster.close()
        # not timed: the processes are gone before the next round
        for _ in range(300):
            if all(c.name != name for c in gateway.list_clusters()):
                break
            time.sleep(0.1)
    return t_sched - t0, t_first - t0, t_n - t_first, t_stop - t_n


def floor_round(tmp: Path, n: int) -> Times:
    """``dask scheduler`` and ``dask worker`` processes, started one after the other."""
    from distributed import Client

    sched_file = tmp / f"scheduler-{time.monotonic_ns()}.json"
    common = ["--dashboard-address", f"{LOOPBACK}:0"]
    worker_args = ["--nthreads", "1", "--memory-limit", WORKER_MEMORY, *common]
    procs: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str]) -> None:
        procs.append(
            subprocess.Popen(
                argv,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    t0 = time.perf_counter()
    start([DASK, "scheduler", "--host", LOOPBACK, "--port", "0", "--scheduler-file",
           str(sched_file), *common])  # fmt: skip
    client = Client(  # type: ignore[no-untyped-call]
        scheduler_file=str(sched_file), timeout=120, set_as_default=False
    )
    t_sched = time.perf_counter()
    address = str(client.scheduler_info()["address"])
    start([DASK, "worker", address, *worker_args])
    client.wait_for_workers(1, timeout=120)
    t_first = time.perf_counter()
    for _ in range(n - 1):
        start([DASK, "worker", address, *worker_args])
    client.wait_for_workers(n, timeout=120)
    t_n = time.perf_counter()
    client.close()  # type: ignore[no-untyped-call]
    for proc in reversed(procs):  # not timed: a gateway's shutdown() does not wait either
        proc.send_signal(signal.SIGINT)  # the first signal of dask-gateway's local backend
    for proc in reversed(procs):
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    sched_file.unlink(missing_ok=True)
    return t_sched - t0, t_first - t0, t_n - t_first, math.nan


async def start_hub(tmp: Path, workers: int) -> Any:
    """The integration test's hub (tests/testbed/hub.py, pytest-jupyterhub's steps)."""
    clear_runtimes()
    path = tmp / "facility.yaml"
    path.write_text(yaml.safe_dump(facility(workers)))
    spawner = {"backend": "local", "uid_sources": ["auth_state"]}
    MockHub.clear_instance()
    app = MockHub.instance(config=Config(hub_config(path, spawner, hub=hub_extra())))
    await app.initialize()
    await app.start()
    # a user's identity (AFUnsafeLocalBackend runs the processes as the gateway's user)
    ids = {"uid": 50001, "gid": 5063, "access_token": "bench-bearer-token"}
    await make_user(app, USER, ("cms",), ids)
    return app


async def stop_hub(app: Any) -> None:
    app.log.handlers = []
    if app.http_server:
        app.http_server.stop()
    await app.shutdown_cancel_tasks()
    MockHub.clear_instance()
    clear_runtimes()


def ledger_cpu_millis() -> int:
    (rt,) = runtimes()
    return int(rt.ledger.usage("cms").cpu_millis)


async def run(tmp: Path, repeat: int, n: int) -> tuple[list[Row], dict[str, Any]]:
    from dask_gateway import BasicAuth, JupyterHubAuth

    facts: dict[str, Any] = {}
    app = await start_hub(tmp, n)
    ours_dir, peer_dir, floor_dir = (tmp / d for d in ("ours", "peer", "floor"))
    for d in (ours_dir, peer_dir, floor_dir):
        d.mkdir(mode=0o755)
    facility_file = ours_dir / "gateway-facility.yaml"
    facility_file.write_text(yaml.safe_dump(facility(n)))
    ours_gw = GatewayProcess(
        ours_dir, url_path_join(app.hub.url, "api"), TOKEN, facility_file,
        backend="afdask.backends.AFUnsafeLocalBackend", renew=60.0,
    )  # fmt: skip
    peer_gw = PeerGateway(peer_dir)
    gateways: list[GatewayProcess] = [ours_gw, peer_gw]
    try:
        for gw in gateways:
            await asyncio.to_thread(gw.wait_ready)
        user_token = app.users[USER].new_api_token()
        rows = {
            "ours": Row("ours", "dask-gateway-server + afdask local backend, hub auth + leases"),
            "peer": Row("peer", "dask-gateway-server UnsafeLocalBackend, SimpleAuthenticator"),
            "floor": Row("floor", "dask scheduler + dask worker processes, no gateway"),
        }
        leased: list[int] = facts.setdefault("ledger_cpu_millis_with_n_workers", [])
        contenders: dict[str, Callable[[], Times]] = {
            "ours": lambda: gateway_round(
                ours_gw, JupyterHubAuth(user_token), n, lambda: leased.append(ledger_cpu_millis())
            ),
            "peer": lambda: gateway_round(peer_gw, BasicAuth(USER, PEER_PASSWORD), n),
            "floor": lambda: floor_round(floor_dir, n),
        }
        order = list(contenders)
        for i in range(repeat + 1):  # round 0 warms up every contender (imports, caches)
            for name in order if i % 2 else reversed(order):
                row = rows[name]
                try:
                    times = await asyncio.to_thread(contenders[name])
                except Exception as exc:
                    logging.getLogger("bench").warning("%s round %d: %r", name, i, exc)
                    row.failures.append(f"round {i}: {type(exc).__name__}: {exc}"[:300])
                    continue
                if name == "ours":
                    for _ in range(100):  # the lease is released when the cluster stopped
                        if ledger_cpu_millis() == 0:
                            break
                        await asyncio.sleep(0.1)
                    facts.setdefault("ledger_cpu_millis_after_rounds", []).append(
                        ledger_cpu_millis()
                    )
                if i == 0:
                    continue
                for series, value in zip(
                    (row.scheduler_s, row.first_worker_s, row.n_workers_s, row.shutdown_s),
                    times,
                    strict=True,
                ):
                    if not math.isnan(value):
                        series.append(value)
        facts["ours_log_has_token"] = "bench-bearer-token" in ours_gw.log(5000)
        return list(rows.values()), facts
    finally:
        for gw in gateways:
            await asyncio.to_thread(gw.stop)
        await stop_hub(app)


def summarize(row: Row) -> dict[str, Any]:
    p = _common.percentile
    out: dict[str, Any] = {"impl": row.impl, "what": row.what, "rounds": len(row.scheduler_s)}
    for key in ("scheduler_s", "first_worker_s", "n_workers_s", "shutdown_s"):
        values: list[float] = getattr(row, key)
        out[f"{key}_p50"] = round(p(values, 50), 3)
        out[f"{key}_p95"] = round(p(values, 95), 3)
    out["failures"] = len(row.failures)
    return out


def ratios(figures: dict[str, dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in ("scheduler_s", "first_worker_s", "n_workers_s"):
        ours = figures["ours"][f"{key}_p50"]
        for other in ("peer", "floor"):
            base = figures[other][f"{key}_p50"]
            out[f"{key}_p50 ours/{other}"] = round(ours / base, 2) if base else float("nan")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="measured rounds (5)")
    parser.add_argument("--workers", type=int, default=2, help="N of scale(N) (2)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    data = _common.header("bench_dask_cluster")
    if shutil.which("configurable-http-proxy") is None:
        os.environ["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    with tempfile.TemporaryDirectory(prefix="bench-dask-") as d:
        tmp = Path(d)
        tmp.chmod(0o755)
        rows, facts = asyncio.run(run(tmp, args.repeat, args.workers))
    figures = {r.impl: summarize(r) for r in rows}
    n = args.workers
    heads = ("impl", "ok", "new_cluster() p50 s", "p95", "first worker p50 s", "p95",
             f"scale({n}) to {n} workers p50 s", "p95", "shutdown() p50 s", "p95")  # fmt: skip
    cells = [
        (f["impl"], f"{f['rounds']}/{args.repeat}", f["scheduler_s_p50"], f["scheduler_s_p95"],
         f["first_worker_s_p50"], f["first_worker_s_p95"], f["n_workers_s_p50"],
         f["n_workers_s_p95"], f["shutdown_s_p50"], f["shutdown_s_p95"])
        for f in figures.values()
    ]  # fmt: skip
    rat = ratios(figures)
    summary = (
        f"{args.repeat} rounds (after one warm-up round), contenders in alternating order. "
        "Seconds as the user's client sees them: `new_cluster()` until it returns (scheduler "
        f"running), from the same start to the first worker ready (`scale(1)` + "
        f"`wait_for_workers(1)`), from `scale({n})` to {n} workers ready, and `shutdown()`. "
        "ours: dask-gateway-server with afdask's local backend, hub auth and leases; peer: "
        "dask-gateway-server with UnsafeLocalBackend and SimpleAuthenticator; floor: `dask "
        "scheduler` + `dask worker` processes started directly.\n\n"
        + _common.table(heads, cells)
        + "\n\nRatios of medians: "
        + ", ".join(f"{k} {v}" for k, v in rat.items())
    )
    print(summary)
    data.update(
        parameters={"repeat": args.repeat, "workers": n, "heartbeat_period_s": 2},
        results=list(figures.values()),
        ratios=rat,
        facts=facts,
        samples=[asdict(r) for r in rows],
    )
    data["machine"]["packages"].update(
        {p: _common.version(p) for p in ("dask-gateway-server", "dask-gateway", "distributed")}
    )
    for path in _common.write("bench_dask_cluster", data, summary):
        print("wrote", path.relative_to(_common.ROOT))


if __name__ == "__main__":
    main()
