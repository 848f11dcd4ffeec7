"""Scenarios (b) and (c): the control plane fails under a hub that is spawning.

(b) kube-apiserver restarted 5 times during a burst of spawns; (c) etcd frozen (SIGSTOP)
for 10 s during spawns. Every spawn either completes or fails with a clear message, nothing
is orphaned, the ledger equals the servers the hub runs. How long the hub's informers take
to recover (a probe spawn right after each outage, until its server is ready) is recorded,
never asserted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

import pytest

from chaos.harness import RealHub, SpawnOutcome
from chaos.report import ChaosReport
from chaos.truth import Checks, check_ledger, check_orphans, clear_failure, describe
from testbed.k8s import KubeCluster

pytestmark = [pytest.mark.chaos, pytest.mark.k8s]

RESTARTS = 5
PER_RESTART = 2  # spawns fired just before each restart
FREEZE_SECONDS = 10.0
PROBE_WITHIN = 120.0  # a liveness bound, not a timing assertion


def check_outcomes(outcomes: list[SpawnOutcome], checks: Checks, figures: dict[str, Any]) -> None:
    """Each spawn completed, or failed/was refused with a message a user can act on."""
    figures["spawns"] = {
        r: sum(o.result == r for o in outcomes) for r in ("ready", "failed", "refused", "lost")
    }
    figures["failure_messages"] = sorted({o.message[:300] for o in outcomes if o.message})[:8]
    unclear = [o for o in outcomes if o.result != "ready" and not clear_failure(o.message)]
    lost = [o for o in outcomes if o.result == "lost"]
    checks.check(not lost, f"spawn requests without an answer: {describe(lost)}")
    checks.check(not unclear, f"spawns failed without a clear message: {describe(unclear)}")


async def probe(
    hub: RealHub, user: str, since: float, outcomes: list[SpawnOutcome]
) -> float | None:
    """Seconds from ``since`` (control plane back) until a new spawn's server is ready;
    retried (the same user) until then, for at most PROBE_WITHIN s. Every attempt's outcome
    goes to ``outcomes`` (they are spawns during the chaos too)."""
    while time.monotonic() - since < PROBE_WITHIN:
        outcome = await hub.spawn(user)
        outcomes.append(outcome)
        if outcome.result == "ready":
            return round(time.monotonic() - since, 2)
        await hub.settle()
        await asyncio.sleep(1)
    return None


def crash_apiserver(cluster: KubeCluster) -> None:
    """SIGKILL kube-apiserver (a crash: no graceful shutdown), then restart it on its port."""
    proc = next(p for p in cluster.procs if p.name == "kube-apiserver").proc
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    cluster.restart_apiserver(down_seconds=2.0)


async def test_apiserver_restarted_during_spawns(
    chaos_hub: Any, chaos_report: ChaosReport, k8s_cluster: KubeCluster
) -> None:
    burst = [f"b{i}" for i in range(RESTARTS * PER_RESTART)]
    probes = [f"p{i}" for i in range(RESTARTS + 1)]
    quota = len(burst) + len(probes) + 1
    spares = [f"s{i}" for i in range(quota + 1)]
    with chaos_report.scenario("apiserver_restarts") as figures:
        hub: RealHub = await chaos_hub({"apis": quota}, burst + probes + spares)
        checks = Checks()
        baseline = await hub.spawn(probes[0])
        assert baseline.result == "ready", baseline
        figures["baseline_spawn_seconds"] = round(baseline.seconds, 2)
        tasks: list[asyncio.Task[SpawnOutcome]] = []
        restart_seconds: list[float] = []
        recovery: list[float | None] = []
        probes_out: list[SpawnOutcome] = []
        for i in range(RESTARTS):
            users = burst[i * PER_RESTART : (i + 1) * PER_RESTART]
            tasks += [asyncio.create_task(hub.spawn(u)) for u in users]
            await asyncio.sleep(0.3 * i)  # the restart lands at a different point each time
            began = time.monotonic()
            await asyncio.to_thread(crash_apiserver, k8s_cluster)
            back = time.monotonic()
            restart_seconds.append(round(back - began, 2))
            recovery.append(await probe(hub, probes[i + 1], back, probes_out))
        outcomes = [*await asyncio.gather(*tasks), *probes_out]
        figures.update(
            restarts=RESTARTS,
            apiserver_down_seconds=restart_seconds,
            recovery_seconds=recovery,
            failed_probe_attempts=describe(o for o in probes_out if o.result != "ready"),
        )
        check_outcomes(outcomes, checks, figures)
        checks.check(
            None not in recovery,
            f"spawns did not succeed again within {PROBE_WITHIN:.0f}s of an apiserver "
            f"restart: {recovery}",
        )
        await hub.settle()
        await check_orphans(hub, checks, figures, "after_restarts")
        await check_ledger(hub, quota, spares, checks, figures, "after_restarts")
        checks.done()


def _etcd_pid(cluster: KubeCluster) -> int:
    return next(p for p in cluster.procs if p.name == "etcd").proc.pid


async def test_etcd_frozen_during_spawns(
    chaos_hub: Any, chaos_report: ChaosReport, k8s_cluster: KubeCluster
) -> None:
    before = [f"e{i}" for i in range(6)]
    during = [f"f{i}" for i in range(2)]
    quota = len(before) + len(during) + 2
    spares = [f"s{i}" for i in range(quota + 1)]
    with chaos_report.scenario("etcd_freeze") as figures:
        hub: RealHub = await chaos_hub({"frozen": quota}, before + during + ["probe"] + spares)
        checks = Checks()
        pid = _etcd_pid(k8s_cluster)
        tasks = [asyncio.create_task(hub.spawn(u)) for u in before]
        await asyncio.sleep(0.5)
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(FREEZE_SECONDS / 2)
            tasks += [asyncio.create_task(hub.spawn(u)) for u in during]
            await asyncio.sleep(FREEZE_SECONDS / 2)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        thawed = time.monotonic()
        probes_out: list[SpawnOutcome] = []
        recovery = await probe(hub, "probe", thawed, probes_out)
        outcomes = [*await asyncio.gather(*tasks), *probes_out]
        figures.update(
            frozen_seconds=FREEZE_SECONDS,
            recovery_seconds=recovery,
            failed_probe_attempts=describe(o for o in probes_out if o.result != "ready"),
        )
        check_outcomes(outcomes, checks, figures)
        checks.check(
            recovery is not None,
            f"spawns did not succeed again within {PROBE_WITHIN:.0f}s of the thaw",
        )
        await hub.settle()
        await check_orphans(hub, checks, figures, "after_freeze")
        await check_ledger(hub, quota, spares, checks, figures, "after_freeze")
        checks.done()
