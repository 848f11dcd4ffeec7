"""Scenario (a): the hub is SIGKILLed at 20 random points of spawns and stops, restarted each
time on the same database. Afterwards nothing is orphaned, the quota ledger equals the
servers the hub runs, and every user can spawn again.

The schedule is seeded and printed; replay a failure with ``AF_CHAOS_SEED=<seed>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
from typing import Any

import pytest

from chaos.harness import FLAVOR, STUCK, RealHub
from chaos.report import ChaosReport
from chaos.truth import Checks, check_ledger, check_orphans, describe, orphans

pytestmark = [pytest.mark.chaos, pytest.mark.k8s]

KILLS = int(os.environ.get("AF_CHAOS_KILLS", "20"))  # fewer for a quick local run
QUOTA = 4
PER_ROUND = 3  # at most this many fresh users spawn in a round
# Every spawn is a user's first: a leftover is never replaced by its owner spawning again
# (today that is the only thing that clears one), so every orphan stays visible.
USERS = [f"k{r:02d}{j}" for r in range(KILLS) for j in range(PER_ROUND)]
SPARES = [f"s{i}" for i in range(QUOTA + 1)]  # take no part in the chaos: the ledger check


def plan_round(rng: random.Random, round_no: int, active: dict[str, bool]) -> list[tuple[str, str]]:
    """Actions of one round: 1-3 fresh users spawn (a quarter of them an unschedulable flavor,
    so the kill can land while a pod is Pending), about half the running servers stop."""
    fresh = [f"k{round_no:02d}{j}" for j in range(rng.randint(1, PER_ROUND))]
    actions = [(u, STUCK if rng.random() < 0.25 else FLAVOR) for u in fresh]
    actions += [(u, "stop") for u in sorted(active) if active[u] and rng.random() < 0.5]
    return actions


def kill_delay(rng: random.Random) -> float:
    """Seconds between the burst and the kill: half the rounds land in the first 0.6 s, where
    the spawner creates the Secret and then the Pod; the others anywhere up to 2.5 s."""
    early = rng.random() < 0.5
    return round(rng.uniform(0.05, 0.6) if early else rng.uniform(0.6, 2.5), 3)


async def fire(hub: RealHub, user: str, action: str) -> None:
    with contextlib.suppress(Exception):  # the hub may die under the request
        if action == "stop":
            await hub.stop_server(user, wait=False)
        else:
            await hub.spawn(user, {"flavor": action}, follow=False)


async def test_hub_sigkilled_during_spawns_and_stops(
    chaos_hub: Any, chaos_report: ChaosReport
) -> None:
    seed = int(os.environ.get("AF_CHAOS_SEED") or secrets.randbelow(2**32))
    print(f"chaos seed {seed} (replay: AF_CHAOS_SEED={seed})")
    rng = random.Random(seed)
    with chaos_report.scenario("hub_sigkill") as figures:
        figures.update(seed=seed, kills_planned=KILLS, quota=QUOTA, users=len(USERS))
        hub: RealHub = await chaos_hub(
            {"kill": QUOTA}, USERS + SPARES, backend={"unschedulable_grace": 8.0}
        )
        checks = Checks()
        schedule: list[dict[str, Any]] = []
        restart_seconds: list[float] = []
        orphans_after_restart: list[int] = []
        for round_no in range(KILLS):
            view = await hub.servers()
            active = {u: bool(m.get("ready")) for (u, _), m in view.items()}
            actions = plan_round(rng, round_no, active)
            delay = kill_delay(rng)
            schedule.append({"round": round_no, "actions": actions, "kill_after": delay})
            tasks = [asyncio.create_task(fire(hub, u, a)) for u, a in actions]
            await asyncio.sleep(delay)
            await asyncio.to_thread(hub.kill)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            restart_seconds.append(round(await asyncio.to_thread(hub.start), 2))
            orphans_after_restart.append((await orphans(hub)).total)
        figures.update(
            kills_survived=hub.kills,
            schedule=schedule,
            hub_restart_seconds=restart_seconds,
            orphans_right_after_each_restart=orphans_after_restart,
        )

        view = await hub.settle()
        figures["servers_after_chaos"] = sorted(
            f"{u}:{m.get('ready')}" for (u, _), m in view.items()
        )
        await check_orphans(hub, checks, figures, "after_kills")
        await check_ledger(hub, QUOTA, SPARES, checks, figures, "after_kills")

        # every user can spawn again (in batches that fit the quota)
        await hub.stop_all()
        failed = []
        for start in range(0, len(USERS), QUOTA):
            batch = USERS[start : start + QUOTA]
            outcomes = await asyncio.gather(*(hub.spawn(u) for u in batch))
            failed += [o for o in outcomes if o.result != "ready"]
            await hub.stop_all()
        figures["spawn_again_failures"] = len(failed)
        checks.check(not failed, f"users could not spawn again: {describe(failed)}")
        await check_orphans(hub, checks, figures, "final")
        checks.done()
