"""Per-hub-process shared state: facility, backend, quota ledger and GPU admission.

Every AFSpawner with the same configuration shares one Runtime, so admission decisions see
all servers of the hub. The GPU admission is woken by the backend whenever its capacity
report may have changed.

Crash safety: the spawner glue gives the runtime the hub's own view of its servers
(``hub_view``). The ledger is rebuilt once, at first use, from the servers the backend runs
that the hub knows (never from leftovers); a periodic sweep removes the backend's objects of
servers the hub does not know and makes the ledger equal to the hub's servers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afspawner.admission import GPUAdmission
from afspawner.backends import Backend
from afspawner.facility import Facility
from afspawner.loader import load_facility_file
from afspawner.ownership import LedgerChanges, ServerView, ledger_changes
from afspawner.plan import UserIdentity
from afspawner.quota import Ledger, Reservation
from afspawner.uid import PoolSettings, load_static_map

log = logging.getLogger("afspawner.runtime")
HubView = Callable[[], ServerView]


@dataclass
class Runtime:
    facility: Facility
    backend: Backend
    static_ids: dict[str, UserIdentity]
    pool: PoolSettings | None
    ledger: Ledger = field(default_factory=Ledger)
    admission: GPUAdmission = field(init=False)
    restored: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    hub_view: HubView | None = None
    sweeps: int = 0  # passes completed
    _sweeper: asyncio.Task[None] | None = field(default=None, repr=False)
    _culler: asyncio.Task[None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.admission = GPUAdmission(self.backend.gpu_free)
        self.backend.watch_capacity(self.admission.wake)

    async def ensure_restored(self) -> None:
        """Rebuild the ledger from the servers the backend runs (once per process).

        With a ``hub_view``, only servers the hub knows are counted; without one (a backend
        used on its own), every server the backend runs.
        """
        if self.restored:
            return
        async with self.lock:
            if not self.restored:
                await self.backend.setup()
                running = await self.backend.running()
                if self.hub_view is None:
                    self.ledger.restore(running)
                else:
                    self.ledger.restore(())
                    self.sync_ledger(running)
                self.restored = True

    def sync_ledger(self, running: list[Reservation]) -> LedgerChanges:
        """Release reservations of servers the hub does not know; count known ones missing.

        Synchronous on purpose: the hub's view and the ledger are read in one step.
        """
        if self.hub_view is None:
            return LedgerChanges()
        changes = ledger_changes(self.ledger.reservations(), running, self.hub_view())
        for username, server_name in changes.release:
            self.ledger.release(username, server_name)
            log.info("quota: released %s/%s (no such server at the hub)", username, server_name)
        for reservation in changes.restore:
            self.ledger.put(reservation)
            log.info("quota: counted %s (a server the hub runs)", reservation.key)
        return changes

    async def reconcile(self) -> int:
        """One sweep: remove orphans, then make the ledger equal to the hub's servers."""
        view = self.hub_view
        if view is None:
            return 0
        await self.ensure_restored()
        removed = await self.backend.sweep(lambda: view().keep)
        self.sync_ledger(await self.backend.running())
        self.sweeps += 1
        return removed

    def start_sweeping(self) -> None:
        """Sweep now and every ``backend.sweep_interval`` seconds (once per runtime)."""
        interval = self.backend.sweep_interval
        if interval is None or self.hub_view is None:
            return
        if self._sweeper is not None and not self._sweeper.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a CLI): nothing to sweep with
            return
        self._sweeper = loop.create_task(self._sweep_loop(interval), name="afspawner sweep")

    async def _sweep_loop(self, interval: float) -> None:
        """Until cancelled (JupyterHub cancels every task at shutdown); errors are retried."""
        while True:
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "sweep failed (%s: %s); retrying in %.0fs", type(exc).__name__, exc, interval
                )
            await asyncio.sleep(interval)

    def start_culling(self, cull: Callable[[], Awaitable[int]], interval: float) -> None:
        """Run ``cull()`` (``afspawner.hubcull``: idle and lifetime limits) every ``interval``
        seconds, once per runtime, next to the sweep; errors are logged and retried."""
        if self._culler is not None and not self._culler.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a CLI)
            return
        self._culler = loop.create_task(self._cull_loop(cull, interval), name="afspawner culling")

    async def _cull_loop(self, cull: Callable[[], Awaitable[int]], interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await cull()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("idle culling failed (%s: %s)", type(exc).__name__, exc)

    def close(self) -> None:
        """Stop the periodic sweep and culling."""
        for task in (self._sweeper, self._culler):
            if task is not None:
                task.cancel()
        self._sweeper = self._culler = None


_runtimes: dict[tuple[Any, ...], Runtime] = {}


def get_runtime(key: tuple[Any, ...]) -> Runtime | None:
    return _runtimes.get(key)


def runtimes() -> tuple[Runtime, ...]:
    """Every runtime of this process (read by the metrics collector at scrape time)."""
    return tuple(_runtimes.values())


def create_runtime(
    key: tuple[Any, ...],
    facility_file: str,
    make_backend: Callable[[Facility], Backend],
    uid_map_file: str | None,
    pool: PoolSettings | None,
) -> Runtime:
    """Load everything a spawner needs; raises FacilityError/ValueError on bad configuration."""
    facility = load_facility_file(facility_file)
    static = load_static_map(Path(uid_map_file)) if uid_map_file else {}
    runtime = Runtime(facility, make_backend(facility), static, pool)
    _runtimes[key] = runtime
    return runtime


def clear_runtimes() -> None:
    for runtime in _runtimes.values():
        with contextlib.suppress(RuntimeError):  # its event loop is closed already
            runtime.close()
    _runtimes.clear()
