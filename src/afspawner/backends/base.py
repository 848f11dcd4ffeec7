"""The backend interface: launch a LaunchPlan, report progress, poll and stop it.

Backends make no policy decisions: the plan says exactly what to run. A backend is created
once per hub process (per configuration) and shared by all spawners.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from afspawner.facility import Facility
from afspawner.plan import LaunchPlan
from afspawner.quota import Reservation

ProgressSink = Callable[[str], None]


class LaunchFailed(Exception):
    """The server could not start; ``message`` says why in the platform's own words."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Started:
    """Where the hub reaches the server, and what to keep in the spawner's state."""

    host: str
    port: int
    state: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LaunchRequest:
    plan: LaunchPlan
    cmd: Sequence[str]
    args: Sequence[str]
    hub_env: Mapping[str, str]  # JUPYTERHUB_* incl. the API token: secret
    port: int
    timeout: float
    bearer_token: str | None = field(default=None, repr=False)  # WLCG token file contents


class Backend(ABC):
    """Base class of backends (entry-point group ``afspawner.backends``)."""

    @classmethod
    @abstractmethod
    def create(cls, facility: Facility, options: Mapping[str, Any], spawner: Any) -> Backend:
        """Build the (process-wide) backend from ``c.AFSpawner.backend_options``.

        ``spawner`` is the first AFSpawner, for reading its traits and log; do not keep it.
        Raise ValueError naming the bad option on invalid configuration.
        """

    async def setup(self) -> None:
        """Connect and start watching (called before each use; must be idempotent)."""
        return None

    @abstractmethod
    async def launch(self, request: LaunchRequest, progress: ProgressSink) -> Started:
        """Start the server and wait until it runs; raise LaunchFailed early on errors."""

    @abstractmethod
    async def poll(self, state: Mapping[str, Any]) -> int | None:
        """``None`` while running, else an exit status."""

    @abstractmethod
    async def stop(self, state: Mapping[str, Any], now: bool = False) -> None:
        """Stop the server and remove what was created for it (idempotent)."""

    async def update_token(self, state: Mapping[str, Any], token: str) -> None:
        """Replace the bearer token a running server sees (after the hub refreshed it)."""
        return None

    async def running(self) -> list[Reservation]:
        """Reservations of every server this backend runs (to rebuild quotas on restart)."""
        return []

    def gpu_free(self, gpu_class: str) -> int | None:
        """Free units of a GPU class, or ``None`` if this backend cannot tell."""
        return None
