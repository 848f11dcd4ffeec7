"""Pacing: keep the hub's event loop responsive while thousands of spawns start at once.

In a spawn storm thousands of coroutines become runnable in the same event-loop iteration
(requests reach the hub together; the benchmark starts them in one iteration). Each does a
millisecond or two of CPU work (policy, manifests, JSON) before its first network wait, so that
one iteration lasts N times as long, and everything else the hub serves (logins, the proxy's
API, activity updates, other users' pages) waits behind it: 4.4 s at N = 3,000 in issue 9.

:meth:`Pacer.turn` is awaited before such a section. While the current slice of loop time is
under ``budget`` it returns at once (no cost when the hub is quiet). Past it, the caller parks
in a FIFO queue, and a drain callback, run once per loop iteration, lets parked callers go in
batches sized to fit the budget (the size follows the measured cost of the previous batch).
Nothing is refused, the order of arrival is kept, and the total work is unchanged: it is spread
over iterations, with the rest of the hub's callbacks running between them.

Pure asyncio, one pacer per event loop (:func:`pacer`), no thread.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import Callable

DEFAULT_BUDGET = 0.02  # seconds of paced work per loop iteration


class Pacer:
    """A FIFO gate that lets through about ``budget`` seconds of sections per iteration.

    ``budget <= 0`` disables pacing (every turn returns at once).
    """

    def __init__(
        self, budget: float = DEFAULT_BUDGET, clock: Callable[[], float] = time.perf_counter
    ):
        self.budget = budget
        self._clock = clock
        self._slice_start: float | None = None
        self._parked: deque[asyncio.Future[None]] = deque()
        self._draining = False
        self._batch = 1
        self._last_drain = 0.0
        self._released = 0
        self.parked_max = 0  # the longest queue seen (for the benchmark and tests)

    @property
    def waiting(self) -> int:
        return len(self._parked)

    async def turn(self) -> None:
        """Return when this caller may run its next CPU-bound section."""
        if self.budget <= 0:
            return
        loop = asyncio.get_running_loop()
        now = self._clock()
        if not self._parked:
            if self._slice_start is None:
                self._slice_start = now
                loop.call_soon(self._end_slice)  # runs at the start of the next iteration
            if now - self._slice_start < self.budget:
                return
        future: asyncio.Future[None] = loop.create_future()
        self._parked.append(future)
        self.parked_max = max(self.parked_max, len(self._parked))
        if not self._draining:
            self._draining = True
            self._released = 0
            loop.call_soon(self._drain, loop)
        try:
            await future
        except asyncio.CancelledError:
            if future in self._parked:  # the caller gave up while parked
                self._parked.remove(future)
            raise

    def _end_slice(self) -> None:
        self._slice_start = None

    def _mark(self) -> None:
        self._last_drain = self._clock()

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Release the next batch, sized from what the previous batch's sections cost.

        The released callers resume in the next iteration, one after the other, between
        ``_mark`` (queued just before them) and this callback (queued just after them), so
        the time from mark to drain is the cost of their sections and nothing else."""
        now = self._clock()
        if self._released:
            per_section = max((now - self._last_drain) / self._released, 1e-6)
            self._batch = max(1, min(1000, int(self.budget / per_section)))
        self._released = 0
        loop.call_soon(self._mark)
        while self._parked and self._released < self._batch:
            future = self._parked.popleft()
            if not future.done():
                future.set_result(None)
                self._released += 1
        if self._parked:
            loop.call_soon(self._drain, loop)
        else:
            self._draining = False


_pacers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Pacer] = weakref.WeakKeyDictionary()


def pacer(budget: float | None = None) -> Pacer:
    """The running loop's pacer; ``budget`` (when given) replaces its budget."""
    loop = asyncio.get_running_loop()
    found = _pacers.get(loop)
    if found is None:
        found = _pacers[loop] = Pacer(DEFAULT_BUDGET if budget is None else budget)
    elif budget is not None:
        found.budget = budget
    return found
