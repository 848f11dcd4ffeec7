"""Per-hub-process shared state: facility, backend, quota ledger and GPU admission.

Every AFSpawner with the same configuration shares one Runtime, so admission decisions see
all servers of the hub. The ledger is rebuilt from the backend once, at first use; the GPU
admission is woken by the backend whenever its capacity report may have changed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afspawner.admission import GPUAdmission
from afspawner.backends import Backend
from afspawner.facility import Facility
from afspawner.loader import load_facility_file
from afspawner.plan import UserIdentity
from afspawner.quota import Ledger
from afspawner.uid import PoolSettings, load_static_map


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

    def __post_init__(self) -> None:
        self.admission = GPUAdmission(self.backend.gpu_free)
        self.backend.watch_capacity(self.admission.wake)

    async def ensure_restored(self) -> None:
        """Rebuild the ledger from what the backend runs (once per process)."""
        if self.restored:
            return
        async with self.lock:
            if not self.restored:
                self.ledger.restore(await self.backend.running())
                self.restored = True


_runtimes: dict[tuple[Any, ...], Runtime] = {}


def get_runtime(key: tuple[Any, ...]) -> Runtime | None:
    return _runtimes.get(key)


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
    _runtimes.clear()
