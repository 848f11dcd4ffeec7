"""The backend interface: launch a LaunchPlan, report progress, poll and stop it.

Backends make no policy decisions: the plan says exactly what to run. A backend is created
once per hub process (per configuration) and shared by all spawners.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from afspawner.facility import Facility
from afspawner.plan import LaunchPlan
from afspawner.quota import Reservation

ProgressSink = Callable[[str], None]
CapacityListener = Callable[[], None]
ServerKey = tuple[str, str]  # (username, server name)
KeepView = Callable[[], Collection[ServerKey]]


def _nothing() -> None:
    return None


class LaunchFailed(Exception):
    """The server could not start; ``message`` says why in the platform's own words."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class Started:
    """Where the hub reaches the server, and what to keep in the spawner's state.

    ``phases``: seconds the platform itself spent in named start-up phases (Kubernetes:
    ``scheduling``, ``image_pull``, ``ready``, from the pod's timestamps), reported as metrics
    by the spawner; empty when the backend cannot tell.
    """

    host: str
    port: int
    state: Mapping[str, Any] = field(default_factory=dict)
    phases: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LaunchRequest:
    """The plan plus the hub's part: command, secret hub variables, port, timeout, token.

    The server's environment is ``plan.env`` (complete, from policy) over ``hub_env``; a
    backend adds only variables of its own mechanics (``BEARER_TOKEN_FILE``, ``HOME``).
    ``gpus_counted`` is called once the backend's capacity report counts this server's GPUs
    (Kubernetes: its pod is in the informer), so the GPU admission stops holding them.
    """

    plan: LaunchPlan
    cmd: Sequence[str]
    args: Sequence[str]
    hub_env: Mapping[str, str]  # JUPYTERHUB_* incl. the API token: secret
    port: int
    timeout: float
    bearer_token: str | None = field(default=None, repr=False)  # WLCG token file contents
    krb5_ccache: bytes | None = field(default=None, repr=False)  # Kerberos credential cache
    #: per-service tokens {service: token} ("": none), files in $AF_TOKENS_DIR
    service_tokens: Mapping[str, str] | None = field(default=None, repr=False)
    gpus_counted: Callable[[], None] = field(default=_nothing, repr=False, compare=False)


class Backend(ABC):
    """Base class of backends (entry-point group ``afspawner.backends``)."""

    @classmethod
    @abstractmethod
    def create(cls, facility: Facility, options: Mapping[str, Any]) -> Backend:
        """Build the (process-wide) backend from ``c.AFSpawner.backend_options``.

        Everything else a server needs is on the plan (decided by policy). Raise ValueError
        naming the bad option on invalid configuration.
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
        """Replace the bearer token a running server sees (after the hub refreshed it);
        ``""``: remove it (the IdP revoked the session)."""
        return None

    async def update_ccache(self, state: Mapping[str, Any], data: bytes) -> None:
        """Replace the Kerberos credential cache a running server sees (``$KRB5CCNAME``);
        ``b""``: remove it."""
        return None

    async def update_services(self, state: Mapping[str, Any], tokens: Mapping[str, str]) -> None:
        """Make ``$AF_TOKENS_DIR`` hold exactly the non-empty ``tokens`` (one file per
        service); ``{}``: remove them all."""
        return None

    async def running(self) -> list[Reservation]:
        """Reservations of every server this backend runs (to rebuild quotas on restart)."""
        return []

    # -- crash safety (see afspawner.ownership) ---------------------------------------------
    #: seconds between two sweeps of :meth:`sweep`; ``None``: this backend needs none
    sweep_interval: float | None = None

    async def find(self, username: str, server_name: str) -> Mapping[str, Any] | None:
        """The state of this server found from its deterministic names, when the spawner has
        no saved state (a hub killed mid-spawn); ``None`` when nothing of it exists."""
        return None

    async def sweep(self, keep: KeepView) -> int:
        """Remove what this backend created for servers not in ``keep()``; how many objects.

        ``keep`` is called after the objects were observed, so a server whose spawn began
        after that is not mistaken for an orphan. Errors are raised (the next pass retries).
        """
        return 0

    # -- capacity reports (read by the GPU admission; no decisions here) ---------------------
    def gpu_free(self, gpu_class: str) -> int | None:
        """Free units of a GPU class, or ``None`` if this backend cannot tell.

        Units of servers the backend already sees (pending or running) are not free.
        """
        return None

    def watch_capacity(self, listener: CapacityListener) -> None:
        """Call ``listener()`` whenever capacity may have changed (nodes or pods changed)."""
        return None
