"""The demo's Dask Gateway (`scripts/demo`): dask-gateway-server as a service of the demo hub.

The hub starts it (``c.JupyterHub.services`` in jupyterhub_config.py) with
``JUPYTERHUB_API_URL``, ``JUPYTERHUB_API_TOKEN`` (the service's token, whose role holds
``custom:af-dask:lease``) and ``JUPYTERHUB_SERVICE_NAME``; users are the hub's, options and the
quota come from the demo's facility file through the hub. Demo only: clusters run as the
gateway's own user (``AFUnsafeLocalBackend``), like the demo's notebook servers; a real
single-machine site runs the gateway as root with ``AFLocalBackend`` (docs/dask.md).
"""

import os
from pathlib import Path

c = get_config()  # type: ignore[name-defined]  # noqa: F821
here = Path(__file__).resolve().parent
state = Path(os.environ.get("AF_DEMO_DIR", Path.home() / ".cache" / "jupyterhub-af" / "demo"))
gateway_port = os.environ.get("AF_DEMO_GATEWAY_PORT", "8786")
api_port = os.environ.get("AF_DEMO_GATEWAY_API_PORT", "8788")

c.DaskGateway.address = f"127.0.0.1:{api_port}"  # private API (the proxy's target)
c.Proxy.address = f"127.0.0.1:{gateway_port}"  # clients' HTTP ...
c.Proxy.tcp_address = f"127.0.0.1:{gateway_port}"  # ... and scheduler traffic, one port

# who: the hub's users (JUPYTERHUB_API_URL / _TOKEN / _SERVICE_NAME from the hub)
c.DaskGateway.authenticator_class = "afdask.auth.AFHubAuthenticator"

# what and how much: the hub's facility file, the hub's quota ledger
c.DaskGateway.backend_class = "afdask.backends.AFUnsafeLocalBackend"
c.FacilityBackend.facility_file = str(here / "facility.yaml")
c.LocalBackend.clusters_directory = str(state / "dask-clusters")
c.ClusterConfig.idle_timeout = 1800  # a forgotten demo cluster stops after 30 minutes
