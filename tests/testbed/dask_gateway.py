"""A real ``dask-gateway-server`` process (its Go proxy included) configured with the
project's classes, authenticating through a hub and reserving in its ledger (docs/dask.md)."""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path
from typing import Any

from traitlets.config import Config

from afspawner import daskapi
from testbed.procs import LOOPBACK, PeerProcess, free_port

#: the gateway's service token at the hub (test bed only)
TOKEN = "dask-gateway-service-token-0123456789"

CONFIG = """\
c.DaskGateway.address = {api!r}
c.DaskGateway.backend_class = {backend!r}
c.DaskGateway.authenticator_class = "afdask.auth.AFHubAuthenticator"
c.DaskGateway.log_level = "DEBUG"
c.Proxy.address = {proxy!r}
c.Proxy.tcp_address = {proxy!r}
c.JupyterHubAuthenticator.jupyterhub_api_url = {hub_api!r}
c.JupyterHubAuthenticator.jupyterhub_api_token = {token!r}
c.JupyterHubAuthenticator.jupyterhub_service_name = "dask-gateway"
c.FacilityBackend.facility_file = {facility!r}
c.FacilityBackend.hub_api_url = {hub_api!r}
c.FacilityBackend.hub_api_token = {token!r}
c.FacilityBackend.lease_renew_period = {renew!r}
c.LocalBackend.clusters_directory = {clusters!r}
c.DBBackendBase.cluster_heartbeat_period = 2
c.DBBackendBase.worker_start_timeout = 120
c.DBBackendBase.cluster_start_timeout = 120
"""


def hub_extra() -> dict[str, Any]:
    """The hub's configuration for the gateway: its Dask API, its service and roles."""
    c = Config()
    c.JupyterHub.extra_handlers = []
    c.JupyterHub.custom_scopes = {}
    c.JupyterHub.tornado_settings = {}
    daskapi.setup(c, lease_ttl=600)
    return {
        **dict(c.JupyterHub),
        "services": [{"name": "dask-gateway", "api_token": TOKEN}],
        "load_roles": [
            {"name": "dask-gateway", "scopes": [daskapi.SCOPE], "services": ["dask-gateway"]},
            {
                "name": "user",
                "scopes": ["self", "access:services!service=dask-gateway"],
            },
        ],
    }


class GatewayProcess:
    """``dask-gateway-server -f <config>``; ``address`` is what clients use (the proxy)."""

    def __init__(
        self,
        tmp: Path,
        hub_api: str,
        token: str,
        facility_file: Path,
        backend: str = "afdask.backends.AFLocalBackend",
        renew: float = 60.0,
    ) -> None:
        api, proxy = free_port(), free_port()  # never the same port twice
        self.address = f"http://{LOOPBACK}:{proxy}"
        self.proxy_address = f"gateway://{LOOPBACK}:{proxy}"
        clusters = tmp / "clusters"
        clusters.mkdir(mode=0o755, exist_ok=True)
        clusters.chmod(0o755)
        config = tmp / "dask_gateway_config.py"
        config.write_text(
            CONFIG.format(
                api=f"{LOOPBACK}:{api}",
                proxy=f"{LOOPBACK}:{proxy}",
                backend=backend,
                hub_api=hub_api,
                token=token,
                facility=str(facility_file),
                renew=renew,
                clusters=str(clusters),
            )
        )
        exe = str(Path(sys.executable).parent / "dask-gateway-server")
        self.proc = PeerProcess("dask-gateway", [exe, "-f", str(config)], tmp)

    def wait_ready(self, timeout: float = 60.0) -> None:
        def up() -> bool:
            with urllib.request.urlopen(f"{self.address}/api/health", timeout=2) as resp:
                return bool(resp.status == 200)

        self.proc.wait_until(up, timeout, "the gateway's health endpoint")

    def log(self, lines: int = 60) -> str:
        return self.proc.tail(lines)

    def stop(self) -> None:
        self.proc.stop(grace=20)
