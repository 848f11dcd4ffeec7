"""Spawn storm (issue 9): N spawns at once, then N stops, on the project's real control plane.

Three contenders, side by side in one run, one hub process (this one), on a loopback control
plane (``tests/testbed/k8s.py``: etcd, kube-apiserver, controller-manager, scheduler, kwok) with
``--nodes`` simulated CPU nodes of 110 pods each:

- ``floor``: bare pods POSTed to the apiserver and awaited through one watch (the least a hub
  could do: one request per spawn, no spawner);
- ``afspawner``: AFSpawner, Kubernetes backend (admission in ``apply_user_options``);
- ``kubespawner``: KubeSpawner 7.x with its defaults.

Spawner objects are driven the way JupyterHub 6's ``User.spawn``/``stop`` drive them (see
``storm_contenders.py``); a spawn is done when ``wait_for_http_server`` reaches the URL
``start()`` returned (``storm_stub.py`` answers for every pod IP, in its own process). For each
N, contender and action: spawns (stops) per second, start latency p50/p95/p99, this process's
CPU time per spawn, event-loop lag (a 10 ms ticker), the hub's own requests per spawn by verb
and resource (counted in aiohttp) and the apiserver's (``apiserver_request_total``, every
client), hub RSS growth per 1,000 running servers, failures. The order of contenders
alternates from one N to the next; each contender is warmed up by one spawn and stop first
(a hub in service: informers synced), and its namespace is emptied between phases.

    .venv/bin/python benchmarks/bench_spawn_storm.py                      # --sizes 50,200
    .venv/bin/python benchmarks/bench_spawn_storm.py --sizes 100,1000,3000 --phase-timeout 600
    .venv/bin/python benchmarks/bench_spawn_storm.py --cap 100            # concurrent_spawn_limit
    .venv/bin/python benchmarks/bench_spawn_storm.py --arrival iteration  # one request per tick

Figures are relative: the machine is shared; compare contenders within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import logging
import math
import pstats
import shutil
import signal
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

import _common

_common.use_test_bed()

from storm_contenders import CONTENDERS, FLOOR_CONNECTIONS, Contender, StormSettings  # noqa: E402
from storm_kit import (  # noqa: E402
    GCPauses,
    ProcessCPU,
    RequestCounter,
    Stub,
    Ticker,
    apiserver_requests,
    clear_namespace,
    ensure_namespace,
    kube_client,
    per_op,
    rss_bytes,
)
from storm_report import Phase, cpu_growth, latency, ratios, rounds, summary  # noqa: E402

from testbed.k8s import KubeCluster, NodeSpec  # noqa: E402
from testbed.procs import free_port  # noqa: E402

NAME = "bench_spawn_storm"
log = logging.getLogger("storm")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="50,200", help="N concurrent spawns, comma-separated")
    p.add_argument(
        "--contenders",
        default="floor,afspawner,kubespawner",
        help=f"comma-separated, afspawner among them: {','.join(CONTENDERS)}",
    )
    p.add_argument("--cap", type=int, default=0, help="spawns/stops in flight at most (0: all)")
    p.add_argument("--nodes", type=int, default=50, help="kwok CPU nodes (110 pods each)")
    p.add_argument(
        "--phase-timeout",
        type=float,
        default=600.0,
        help="seconds a storm may take; spawns still running then are cancelled",
    )
    p.add_argument(
        "--start-timeout",
        type=float,
        default=0.0,
        help="the spawners' start_timeout (default: the phase timeout)",
    )
    p.add_argument("--http-timeout", type=float, default=60.0)
    p.add_argument(
        "--arrival",
        choices=("burst", "iteration"),
        default="burst",
        help="burst: all N coroutines start in the same event-loop iteration (default); "
        "iteration: one spawn request enters per loop iteration, as requests to a hub arrive",
    )
    p.add_argument(
        "--tracemalloc",
        action="store_true",
        help="also trace the bytes N running servers hold (slows the hub: timings then "
        "compare only with other --tracemalloc runs)",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="cProfile AFSpawner's spawn storms into results/<name>.profile.txt (slows them)",
    )
    p.add_argument(
        "--gc-freeze",
        action="store_true",
        help="after the warm-up, move everything alive to the collector's permanent "
        "generation (gc.freeze(), as a hub could after start-up), for every contender",
    )
    p.add_argument(
        "--gc-threshold",
        default="",
        help="gc.set_threshold(a, b, c) after the warm-up, for every contender (as a hub's "
        "jupyterhub_config.py could; default: Python's 700,10,10)",
    )
    p.add_argument(
        "--pacing-budget",
        type=float,
        default=0.02,
        help="AFSpawner.pacing_budget in seconds (0: no pacing)",
    )
    p.add_argument("--name", default=NAME, help="results/<name>.json and .md")
    args = p.parse_args(argv)
    args.sizes = [int(x) for x in str(args.sizes).split(",") if x]
    args.contenders = [c for c in str(args.contenders).split(",") if c]
    unknown = set(args.contenders) - set(CONTENDERS)
    if unknown or "afspawner" not in args.contenders:
        p.error(f"contenders: afspawner plus any of {', '.join(CONTENDERS)}")
    args.start_timeout = args.start_timeout or args.phase_timeout
    return args


async def measure(
    contender: Contender,
    action: str,
    indices: list[int],
    cap: int,
    limit: float,
    counter: RequestCounter,
    kube: Any,
    trace: bool = False,
    profiler: cProfile.Profile | None = None,
    burst: bool = False,
    peers: ProcessCPU | None = None,
) -> Phase:
    """Run ``action`` for every index at once (at most ``cap`` in flight) and take figures."""
    loop = asyncio.get_running_loop()
    n = len(indices)
    gc.collect()
    rss0 = rss_bytes()
    api0 = await apiserver_requests(kube)
    counter.take()
    durations: list[float] = []
    finished: list[float] = []  # when each successful one ended, from the storm's start
    errors: Counter[str] = Counter()
    samples: list[str] = []
    gate = asyncio.Semaphore(cap) if cap > 0 else None
    call = contender.spawn if action == "spawn" else contender.stop

    async def timed(i: int) -> None:
        started = loop.time()
        try:
            await call(i)
        except Exception as exc:
            errors[type(exc).__name__] += 1
            if len(samples) < 5:
                samples.append(f"{type(exc).__name__}: {str(exc)[:300]}")
            return
        durations.append(loop.time() - started)
        finished.append(loop.time() - begun)

    async def one(i: int) -> None:
        if gate is None:
            await timed(i)
        else:
            async with gate:
                await timed(i)

    if trace and not tracemalloc.is_tracing():
        tracemalloc.start()  # until the end of the stop storm
    ticker, pauses, paced = Ticker(), GCPauses(), _pacer()
    parked0 = paced.parked_max if paced else 0
    if paced:
        paced.parked_max = 0
    ticker.start()
    pauses.start()
    if profiler is not None:
        profiler.enable()
    peers0 = peers.snapshot() if peers else {}
    cpu0, t0, begun = time.process_time(), time.monotonic(), loop.time()
    tasks = []
    for i in indices:
        tasks.append(loop.create_task(one(i)))
        if not burst:
            await asyncio.sleep(0)  # the next request arrives in the next loop iteration
    left = max(limit - (time.monotonic() - t0), 0.001)
    _, pending = await asyncio.wait(tasks, timeout=left) if tasks else (set(), set())
    wall, cpu = time.monotonic() - t0, time.process_time() - cpu0
    peers1 = peers.snapshot() if peers else {}
    if profiler is not None:
        profiler.disable()
    lags = await ticker.stop()
    collector = pauses.stop()
    parked = paced.parked_max if paced else 0
    if paced:
        paced.parked_max = max(parked0, parked)
    hub, others = counter.take(contender.namespace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    gc.collect()
    rss1, blocks1 = rss_bytes(), sys.getallocatedblocks()
    traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else math.nan
    api1 = await apiserver_requests(kube)
    ms = [lag * 1000 for lag in lags]
    lat = latency(durations)
    return Phase(
        contender=contender.name,
        action=action,
        n=n,
        cap=cap,
        ok=len(durations),
        failed=sum(errors.values()),
        not_returned=len(pending),
        wall_s=wall,
        last_done_s=max(finished, default=math.nan),
        per_s=len(durations) / wall if wall > 0 else math.nan,
        p50_s=lat["p50_s"],
        p95_s=lat["p95_s"],
        p99_s=lat["p99_s"],
        max_s=lat["max_s"],
        cpu_ms_per_op=cpu * 1000 / n if n else math.nan,
        lag_max_ms=max(ms) if ms else math.nan,
        lag_p99_ms=_common.percentile(ms, 99),
        ticks=len(ms),
        hub_requests_per_op=per_op(hub, n),
        hub_requests_elsewhere_per_op=per_op(others, n),
        apiserver_requests_per_op=per_op(api1 - api0, n) if api0 and api1 else {},
        rss_mib_per_1000=(rss1 - rss0) / 2**20 * 1000 / n if n else math.nan,
        blocks_end=blocks1,
        traced_end=traced,
        errors=dict(errors),
        error_samples=samples,
        gc=collector,
        pacer_parked_max=parked,
        peers_cpu_ms_per_op=ProcessCPU.per_op_ms(peers0, peers1, n),
    )


def _pacer() -> Any:
    """AFSpawner's pacer on this loop (``None`` when afspawner is not imported yet)."""
    pacing = sys.modules.get("afspawner.pacing")
    return pacing.pacer() if pacing is not None else None


def _status(phase: Phase) -> str:
    return (
        f"{phase.contender:11s} {phase.action:5s} N={phase.n:<5d} ok={phase.ok:<5d} "
        f"{phase.per_s:7.1f}/s p99={phase.p99_s:6.2f}s cpu={phase.cpu_ms_per_op:6.2f}ms "
        f"lag max={phase.lag_max_ms:7.1f}ms failed={phase.failed} "
        f"not returned={phase.not_returned}"
    )


async def storm(
    args: argparse.Namespace, s: StormSettings, save: Callable[[list[Phase]], None]
) -> list[Phase]:
    """Warm up each contender, then for each N its spawn and stop storms (``save`` after
    each pair, so a run cut short keeps what it measured)."""
    counter = RequestCounter(s.server)
    counter.install()
    peers = ProcessCPU(dict(s.peer_pids))
    contenders: dict[str, Contender] = {name: CONTENDERS[name](s) for name in args.contenders}
    phases: list[Phase] = []
    profiles: list[str] = []
    async with kube_client(s.server, s.ca_path, s.token) as kube:
        try:
            for c in contenders.values():
                await ensure_namespace(kube, c.namespace)
                await c.prepare("warm", 1)  # a hub in service: informers started and synced
                await c.spawn(0)
                await c.stop(0)
                await clear_namespace(kube, c.namespace, 120)
            await peers.settle()
            if args.gc_freeze:
                gc.collect()
                gc.freeze()
            if args.gc_threshold:
                gc.set_threshold(*(int(x) for x in str(args.gc_threshold).split(",")))
            for k, n in enumerate(args.sizes):
                names = list(contenders)
                order = names if k % 2 == 0 else names[::-1]
                for name in order:
                    c = contenders[name]
                    await c.prepare(f"n{n}r{k}{name[0]}", n)  # new names each round
                    profiler = cProfile.Profile() if args.profile and name == "afspawner" else None
                    spawned = await measure(
                        c,
                        "spawn",
                        list(range(n)),
                        args.cap,
                        args.phase_timeout,
                        counter,
                        kube,
                        args.tracemalloc,
                        profiler,
                        args.arrival == "burst",
                        peers,
                    )
                    print(_status(spawned), flush=True)
                    if profiler is not None:
                        profiles.append(_profile_text(profiler, spawned))
                        path = _common.RESULTS / f"{args.name}.profile.txt"
                        path.write_text("\n\n".join(profiles))
                    running = await _running(c, n, spawned)
                    await peers.settle()  # the stops do not pay for the spawns' tail either
                    stopped = await measure(
                        c,
                        "stop",
                        running,
                        args.cap,
                        args.phase_timeout,
                        counter,
                        kube,
                        burst=args.arrival == "burst",
                        peers=peers,
                    )
                    print(_status(stopped), flush=True)
                    tracemalloc.stop()
                    held(spawned, stopped)
                    stopped.pods_left = await clear_namespace(kube, c.namespace, 300)
                    stopped.settled_s = await peers.settle()  # before the next storm
                    phases += [spawned, stopped]
                    save(phases)
        finally:
            for c in contenders.values():
                with contextlib.suppress(Exception):
                    await c.close()
            counter.uninstall()
    return phases


def held(spawned: Phase, stopped: Phase) -> None:
    """Memory per 1,000 servers: traced bytes the spawn storm left allocated (tracing
    started with it; connection pools included), and blocks freed by the stop storm (what
    running servers hold; state kept after a stop, like Kubernetes events, is not in it)."""
    n = spawned.n
    if n:
        spawned.traced_mib_per_1000 = spawned.traced_end / 2**20 * 1000 / n
    if n and stopped.n == n:
        spawned.blocks_per_1000 = (spawned.blocks_end - stopped.blocks_end) * 1000 / n


def _profile_text(profiler: cProfile.Profile, phase: Phase, top: int = 40) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return f"=== {phase.contender} {phase.action} N={phase.n} (profiled) ===\n{out.getvalue()}"


async def _running(c: Contender, n: int, spawned: Phase) -> list[int]:
    """Indices of servers to stop: all if every spawn returned, else those the spawner has."""
    if spawned.ok == n:
        return list(range(n))
    spawners = getattr(c, "spawners", None)
    if spawners is None:  # the floor: stop every pod it POSTed
        return list(range(n))
    return [i for i, sp in enumerate(spawners) if sp.get_state()]


async def shutdown() -> None:
    """What JupyterHub does at exit: cancel every other task (informers close themselves)."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def run(
    args: argparse.Namespace, s: StormSettings, save: Callable[[list[Phase]], None]
) -> list[Phase]:
    try:
        return await storm(args, s, save)
    finally:
        await shutdown()


class HubLog(logging.Handler):
    """The spawners' and the hub library's warnings and errors: to a file (KubeSpawner logs
    every pod name when a pod is late) and counted by logger and level for the results."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.WARNING)
        self.file = logging.FileHandler(path)
        self.counts: Counter[str] = Counter()
        self.first: dict[str, str] = {}
        logging.getLogger().addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        key = f"{record.name} {record.levelname}"
        self.counts[key] += 1
        self.first.setdefault(key, record.getMessage()[:300])
        self.file.emit(record)

    def summary(self) -> dict[str, Any]:
        return {"records": dict(self.counts), "first": dict(self.first)}


def pools() -> dict[str, int]:
    """HTTP connections to the apiserver each contender may open at once."""
    from kubernetes_asyncio.client import Configuration

    size = int(Configuration().connection_pool_maxsize)  # kubernetes-asyncio's default
    return {"floor": FLOOR_CONNECTIONS, "afspawner": size, "kubespawner": size}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # run the finally blocks: processes stopped

    signal.signal(signal.SIGTERM, terminate)
    head = _common.header(NAME)
    workdir = Path(tempfile.mkdtemp(prefix="af-storm-"))
    cluster = KubeCluster(workdir)
    stub = Stub(free_port())
    hub_log = HubLog(workdir / "hub.log")
    try:
        nodes = [NodeSpec(f"storm-{i:03d}", "256", "1Ti") for i in range(args.nodes)]
        cluster.start(nodes=nodes, timeout=300)
        print(f"control plane up in {cluster.startup_seconds:.0f} s", flush=True)
        stub.start()
        settings = StormSettings(
            server=cluster.server,
            ca_path=cluster.ca_path,
            token=cluster.token,
            kubeconfig=cluster.kubeconfig,
            workdir=workdir,
            port=stub.port,
            start_timeout=args.start_timeout,
            http_timeout=args.http_timeout,
            pacing_budget=args.pacing_budget,
            peer_pids=(
                *((p.name, p.proc.pid) for p in cluster.procs),
                *((("storm_stub", stub.proc.pid),) if stub.proc else ()),
            ),
        )

        def save(phases: list[Phase]) -> None:
            data = {
                **head,
                "settings": dict(vars(args)),
                "control_plane": {"nodes": args.nodes, "pods_per_node": 110,
                                  "startup_s": round(cluster.startup_seconds, 1)},
                "connection_pools": pools(),
                "hub_log": hub_log.summary(),
                "complete": len(phases) == 2 * len(args.sizes) * len(args.contenders),
                "phases": [asdict(p) for p in phases],
                "ratios": ratios(phases),
                "rounds": rounds(ratios(phases)),
                "cpu_growth": cpu_growth(phases),
            }  # fmt: skip
            _common.write(args.name, data, summary(phases, args, cluster.startup_seconds))

        phases = asyncio.run(run(args, settings, save))
        print(summary(phases, args, cluster.startup_seconds))
        print(f"\nwrote {_common.RESULTS / args.name}.json and .md")
        return 0
    finally:
        stub.stop()
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
