"""afspawner.pacing: a storm of sections is spread over loop iterations, in order, none lost.

The clock is simulated (each section "costs" a fixed time), so the assertions are about how
the pacer schedules, never about how fast this machine is.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from traitlets import TraitError

from afspawner.backends.kubernetes import _secrets_of
from afspawner.pacing import Pacer, pacer
from afspawner.spawner_traits import SpawnerTraits


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Iterations:
    """Counts event-loop iterations (a callback that reschedules itself)."""

    def __init__(self) -> None:
        self.n = 0
        self._on = True
        asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        self.n += 1
        if self._on:
            asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        self._on = False


async def _storm(p: Pacer, clock: Clock, n: int, cost: float) -> tuple[list[int], Counter[int]]:
    it = Iterations()
    order: list[int] = []
    per_iteration: Counter[int] = Counter()

    async def spawn(i: int) -> None:
        await p.turn()
        order.append(i)
        per_iteration[it.n] += 1
        clock.t += cost  # the section's CPU work

    await asyncio.gather(*(spawn(i) for i in range(n)))
    it.stop()
    return order, per_iteration


async def test_a_burst_is_spread_over_iterations_in_order() -> None:
    clock = Clock()
    p = Pacer(budget=0.02, clock=clock)
    order, per_iteration = await _storm(p, clock, 500, 0.005)
    assert order == list(range(500))  # FIFO, every one ran
    # 20 ms of budget, 5 ms per section: at most 4 sections per iteration (+1 that starts
    # just under the budget), where without pacing all 500 would run in one
    assert max(per_iteration.values()) <= 5
    assert len(per_iteration) >= 500 // 5
    assert p.waiting == 0 and p.parked_max > 400


async def test_without_pacing_the_burst_runs_in_one_iteration() -> None:
    clock = Clock()
    order, per_iteration = await _storm(Pacer(budget=0, clock=clock), clock, 200, 0.005)
    assert order == list(range(200))
    assert max(per_iteration.values()) == 200  # what the pacer prevents


async def test_a_quiet_hub_never_waits() -> None:
    clock = Clock()
    p = Pacer(budget=0.02, clock=clock)
    for _ in range(50):  # one section per iteration, each under the budget
        await p.turn()
        clock.t += 0.001
        await asyncio.sleep(0)
    assert p.parked_max == 0


async def test_the_batch_follows_the_cost_of_sections() -> None:
    clock = Clock()
    p = Pacer(budget=0.02, clock=clock)
    _, cheap = await _storm(p, clock, 400, 0.0005)  # 0.5 ms: about 40 per iteration
    assert 30 <= max(cheap.values()) <= 41


async def test_other_work_in_the_iteration_does_not_slow_the_release() -> None:
    """Responses and watch events handled in the same iterations (50 ms each here) are not
    counted as the sections' cost: batches stay about budget / section cost."""
    clock = Clock()
    p = Pacer(budget=0.02, clock=clock)
    busy = True

    def other_work() -> None:
        clock.t += 0.05
        if busy:
            asyncio.get_running_loop().call_soon(other_work)

    asyncio.get_running_loop().call_soon(other_work)
    try:
        _, per_iteration = await _storm(p, clock, 400, 0.001)
    finally:
        busy = False
    assert sorted(per_iteration.values())[len(per_iteration) // 2] >= 15  # median batch


async def test_a_caller_cancelled_while_waiting_is_dropped_and_the_rest_go_on() -> None:
    clock = Clock()
    p = Pacer(budget=0.01, clock=clock)
    done: list[int] = []

    async def spawn(i: int) -> None:
        await p.turn()
        clock.t += 0.01
        done.append(i)

    tasks = [asyncio.ensure_future(spawn(i)) for i in range(20)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    tasks[10].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert tasks[10].cancelled()
    assert done == [i for i in range(20) if i != 10]
    assert p.waiting == 0


async def test_one_pacer_per_loop_and_its_budget_is_configurable() -> None:
    first = pacer(0.05)
    assert pacer() is first and first.budget == 0.05
    assert pacer(0.01).budget == 0.01


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"namespace": "n", "pod": "jupyter-a", "vo": "cms"}, ["jupyter-a"]),
        (
            {
                "namespace": "n",
                "pod": "jupyter-a",
                "vo": "cms",
                "token_sha": "x",
                "services_sha": "y",
            },
            ["jupyter-a", "jupyter-a-token", "jupyter-a-services"],
        ),
        (  # found by name or a failed launch: every Secret it may have
            {"namespace": "n", "pod": "jupyter-a"},
            ["jupyter-a", "jupyter-a-token", "jupyter-a-krb5", "jupyter-a-services"],
        ),
    ],
)
def test_a_stop_deletes_the_secrets_the_server_has(
    state: dict[str, str], expected: list[str]
) -> None:
    assert _secrets_of(state) == expected


def test_a_negative_budget_is_a_configuration_error() -> None:
    with pytest.raises(TraitError, match="pacing_budget"):
        SpawnerTraits(pacing_budget=-0.5)
    assert SpawnerTraits(pacing_budget=0).pacing_budget == 0  # off
