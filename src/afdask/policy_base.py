"""What every afdask gateway backend shares: the facility's settings, the hub client and the
lease renewal loop (a mixin for :class:`~afdask.backends.FacilityBackend` and
:class:`~afdask.kube_backend.AFKubeBackend`).

The settings are traits of this mixin, so both ``c.FacilityBackend.<name>`` (local backends)
and ``c.AFKubeBackend.<name>`` set them.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

from dask_gateway_server.backends.base import PublicException
from traitlets import Bool, Float, Unicode, default
from traitlets.config import LoggingConfigurable

from afdask.hub import HubClient
from afspawner.facility import Facility
from afspawner.loader import load_facility_file


class FacilityPolicy(LoggingConfigurable):
    """The facility file, the hub's lease API and the periodic renewal of every lease."""

    facility_file = Unicode("", help="The facility file (the hub's).", config=True)
    hub_api_url = Unicode(help="The hub's API URL ($JUPYTERHUB_API_URL).", config=True)
    hub_api_token = Unicode(
        help="The gateway service's hub token ($JUPYTERHUB_API_TOKEN); its role needs "
        "custom:af-dask:lease.",
        config=True,
    )
    allow_root = Bool(False, help="Allow clusters to run as uid/gid 0.", config=True)
    lease_renew_period = Float(
        60.0, help="Seconds between two renewals of every active cluster's lease.", config=True
    )

    @default("hub_api_url")
    def _default_hub_api_url(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "")

    @default("hub_api_token")
    def _default_hub_api_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    def open_policy(self) -> None:
        """Load the facility and connect to the hub (a clear error when a setting is missing)."""
        if not self.facility_file:
            raise ValueError(f"c.{type(self).__name__}.facility_file is not set")
        if not (self.hub_api_url and self.hub_api_token):
            raise ValueError("the hub's API URL and the gateway's hub token are needed")
        self.facility: Facility = load_facility_file(self.facility_file)
        self.hub = HubClient(self.hub_api_url, self.hub_api_token)
        self._leased: dict[str, int] = {}
        self._messages: dict[str, str] = {}  # why the last lease gave fewer workers

    def start_renewing(self) -> None:
        self._renewer = asyncio.ensure_future(self._renew_loop())

    def stop_renewing(self) -> None:
        renewer = getattr(self, "_renewer", None)
        if renewer is not None:
            renewer.cancel()

    async def close_policy(self) -> None:
        if hasattr(self, "hub"):
            await self.hub.close()

    async def renew_leases(self) -> None:
        """Renew every active cluster's lease (each backend knows its clusters)."""
        raise NotImplementedError

    async def _lease(self, cluster: Any, wanted: int) -> int | None:
        """Lease up to ``wanted`` workers for ``cluster``; ``None`` when the hub did not answer."""
        raise NotImplementedError

    async def scale_within_lease(
        self,
        cluster: Any,
        record: Any,
        msg: dict[str, Any],
        forward: Callable[[Any, dict[str, Any]], Awaitable[None]],
    ) -> None:
        """Forward a user's ``scale`` as far as the hub leases it; say why when it is less."""
        wanted = int(msg["count"])
        self._messages.pop(cluster.name, None)
        granted = await self._lease(record, wanted)
        if granted is None:
            raise PublicException("the hub did not answer; the cluster was not scaled, try again")
        await forward(cluster, {**msg, "count": min(wanted, granted)})
        if granted < wanted:
            raise PublicException(
                self._messages.get(cluster.name)
                or f"your cluster was scaled to {granted} workers, not {wanted}"
            )

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_renew_period)
            try:
                await self.renew_leases()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("lease renewal failed (%s)", type(exc).__name__)
