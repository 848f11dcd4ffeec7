"""Fair FIFO waiting for GPUs of a class, with position reports for the spawn page.

Waiters of one class are served strictly in arrival order: the head is admitted only when
enough units are free for it, and nobody behind it may jump ahead. ``recheck`` is called by
the informers whenever nodes or pods change.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(eq=False)
class Waiter:
    ticket: int
    count: int
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    moved: asyncio.Event = field(default_factory=asyncio.Event)
    released: bool = False


class GPUQueue:
    """One FIFO per GPU class; ``free(class)`` reports currently free units."""

    def __init__(self, free: Callable[[str], int | None]) -> None:
        self._free = free
        self._queues: dict[str, deque[Waiter]] = {}
        self._granted: dict[str, int] = {}  # handed out, server not yet running
        self._tickets = itertools.count()

    def available(self, gpu_class: str) -> int | None:
        """Free units not yet handed to a waiter; ``None`` when the backend cannot tell."""
        free = self._free(gpu_class)
        return None if free is None else max(free - self._granted.get(gpu_class, 0), 0)

    def done(self, gpu_class: str, waiter: Waiter) -> None:
        """The granted server now runs (or failed): its units are counted by the backend."""
        if waiter.ready.is_set() and not waiter.released:
            waiter.released = True
            self._granted[gpu_class] = max(self._granted.get(gpu_class, 0) - waiter.count, 0)
            self.recheck(gpu_class)

    def waiting(self, gpu_class: str) -> int:
        return len(self._queues.get(gpu_class, ()))

    def position(self, gpu_class: str, waiter: Waiter) -> int:
        """How many are ahead of ``waiter``."""
        return list(self._queues.get(gpu_class, ())).index(waiter)

    def enqueue(self, gpu_class: str, count: int) -> Waiter:
        waiter = Waiter(next(self._tickets), count)
        self._queues.setdefault(gpu_class, deque()).append(waiter)
        self.recheck(gpu_class)
        return waiter

    def leave(self, gpu_class: str, waiter: Waiter) -> None:
        queue = self._queues.get(gpu_class)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            for other in queue:
                other.moved.set()
            self.recheck(gpu_class)

    def recheck(self, gpu_class: str | None = None) -> None:
        """Admit the head of each queue while there are units for it."""
        classes = [gpu_class] if gpu_class is not None else list(self._queues)
        for name in classes:
            queue = self._queues.get(name)
            budget = self.available(name)
            while queue and (budget is None or queue[0].count <= budget):
                head = queue.popleft()
                if budget is not None:
                    budget -= head.count
                self._granted[name] = self._granted.get(name, 0) + head.count
                head.ready.set()
                for other in queue:
                    other.moved.set()
