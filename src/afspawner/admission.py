"""GPU admission: one fair FIFO per GPU class and the hand-off queued → granted → running.

One :class:`GPUAdmission` per hub process owns every unit it has handed out. A spawn holds
its GPUs with ``async with admission.gpus(plan.gpu, wait, progress) as grant:`` around the
launch. Waiters of a class are served strictly in arrival order: the head is granted only
when enough units are free for it, and nobody behind it may jump ahead. A grant holds its
units until the backend counts the server's pod itself (``grant.running()``, called through
``LaunchRequest.gpus_counted``) or the block ends; on failure they are given back.

The backend only *reports* capacity: ``free(class)`` (units not used or requested by the
servers it sees, ``None`` when it cannot tell) and calls :meth:`GPUAdmission.wake` when nodes
or pods change. A slow safety timer re-checks as well.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from afspawner.plan import GPURequest
from afspawner.policy import Refusal

SAFETY_INTERVAL = 30.0  # seconds between re-checks without any capacity notification


class GrantState(Enum):
    QUEUED = "queued"
    GRANTED = "granted"  # units held here: the backend does not count the server yet
    RUNNING = "running"  # the backend counts the server's units itself
    RELEASED = "released"


@dataclass(frozen=True)
class WaitSettings:
    """What to do when no unit is free (from ``AFSpawner.gpu_wait``/``gpu_queue_timeout``)."""

    mode: Literal["refuse", "queue"] = "refuse"
    timeout: float = 900.0
    safety_interval: float = SAFETY_INTERVAL


@dataclass(eq=False)
class Grant:
    """One spawn's claim on ``count`` units of ``gpu_class``."""

    gpu_class: str
    count: int
    ticket: int
    admission: GPUAdmission = field(repr=False)
    state: GrantState = GrantState.QUEUED
    owner: str = ""  # "user/server" of the spawn, shown on the facility page
    ready: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    moved: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def running(self) -> None:
        """The backend now counts this server's units: stop holding them here."""
        self.admission.running(self)


class GPUAdmission:
    """FIFO queues per GPU class over the capacity ``free(class)`` reported by the backend."""

    def __init__(self, free: Callable[[str], int | None]) -> None:
        self._free = free
        self._queues: dict[str, deque[Grant]] = {}
        self._held: dict[str, int] = {}  # granted, not yet counted by the backend
        self._tickets = itertools.count()

    # -- reports -----------------------------------------------------------------------------
    def available(self, gpu_class: str) -> int | None:
        """Free units not yet handed to a spawn; ``None`` when the backend cannot tell."""
        free = self._free(gpu_class)
        return None if free is None else max(free - self._held.get(gpu_class, 0), 0)

    def waiting(self, gpu_class: str) -> int:
        return len(self._queues.get(gpu_class, ()))

    def queued(self) -> dict[str, tuple[str, ...]]:
        """The owners of the waiting spawns of each class, head first."""
        return {name: tuple(g.owner for g in q) for name, q in self._queues.items() if q}

    def position(self, grant: Grant) -> int:
        """How many are ahead of ``grant`` in its queue."""
        return list(self._queues.get(grant.gpu_class, ())).index(grant)

    # -- transitions -------------------------------------------------------------------------
    def enqueue(self, gpu_class: str, count: int, owner: str = "") -> Grant:
        grant = Grant(gpu_class, count, next(self._tickets), self, owner=owner)
        self._queues.setdefault(gpu_class, deque()).append(grant)
        self.wake(gpu_class)
        return grant

    def running(self, grant: Grant) -> None:
        """granted → running: the backend's capacity report counts the units from now on."""
        if grant.state is GrantState.GRANTED:
            self._unhold(grant)
            grant.state = GrantState.RUNNING
            self.wake(grant.gpu_class)  # a wake in between may have counted the units twice

    def release(self, grant: Grant) -> None:
        """End of the spawn's claim (idempotent); a running grant stays with the backend."""
        state = grant.state
        if state is GrantState.QUEUED:
            grant.state = GrantState.RELEASED
            queue = self._queues.get(grant.gpu_class)
            if queue is not None and grant in queue:
                queue.remove(grant)
                for other in queue:
                    other.moved.set()
            self.wake(grant.gpu_class)
        elif state is GrantState.GRANTED:
            grant.state = GrantState.RELEASED
            self._unhold(grant)
            self.wake(grant.gpu_class)

    def wake(self, gpu_class: str | None = None) -> None:
        """Capacity may have changed: grant the head of each queue while there are units."""
        classes = [gpu_class] if gpu_class is not None else list(self._queues)
        for name in classes:
            queue = self._queues.get(name)
            budget = self.available(name)
            while queue and (budget is None or queue[0].count <= budget):
                head = queue.popleft()
                if budget is not None:
                    budget -= head.count
                self._held[name] = self._held.get(name, 0) + head.count
                head.state = GrantState.GRANTED
                head.ready.set()
                for other in queue:
                    other.moved.set()

    def _unhold(self, grant: Grant) -> None:
        self._held[grant.gpu_class] = max(self._held.get(grant.gpu_class, 0) - grant.count, 0)

    # -- the spawn's view --------------------------------------------------------------------
    @asynccontextmanager
    async def gpus(
        self,
        gpu: GPURequest,
        wait: WaitSettings,
        progress: Callable[[str], None],
        owner: str = "",
    ) -> AsyncIterator[Grant]:
        """Hold ``gpu.count`` units for the block: wait FIFO (or refuse), release on exit."""
        grant = self.enqueue(gpu.gpu_class, gpu.count, owner)
        try:
            await self._wait(grant, gpu.label, wait, progress)
            yield grant
        finally:
            self.release(grant)

    async def _wait(
        self, grant: Grant, display: str, wait: WaitSettings, progress: Callable[[str], None]
    ) -> None:
        if grant.ready.is_set():
            return
        if wait.mode == "refuse":
            raise Refusal(
                f"no {display} GPU is free right now; try again later or pick a "
                "flavor without a GPU",
                503,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait.timeout
        while not grant.ready.is_set():
            progress(f"waiting for a {display}: {self.position(grant)} ahead of you")
            grant.moved.clear()
            left = deadline - loop.time()
            if left <= 0:
                raise Refusal(
                    f"no {display} GPU became free within {wait.timeout:.0f}s; try again later",
                    503,
                )
            if not await _first_set(grant.ready, grant.moved, min(left, wait.safety_interval)):
                self.wake(grant.gpu_class)  # safety net for a missed notification
        progress(f"a {display} is free; starting")


async def _first_set(a: asyncio.Event, b: asyncio.Event, within: float) -> bool:
    """Wait until either event is set (``True``) or ``within`` seconds pass (``False``)."""
    tasks = {asyncio.create_task(a.wait()), asyncio.create_task(b.wait())}
    try:
        done, _ = await asyncio.wait(tasks, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    return bool(done)
