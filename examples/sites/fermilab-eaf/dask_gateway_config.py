"""Fermilab EAF's Dask Gateway: the Kubernetes side of the COFFEA-DASK flavor (see README.md).

dask-gateway's Kubernetes layout (its Helm chart), each in its own Deployment next to the hub,
in the hub's image (jupyterhub-af installed):

- ``dask-gateway-server -f dask_gateway_config.py`` (this file): the API (Service
  ``dask-gateway-api``, port 8000), with the project's authenticator and backend;
- dask-gateway's controller (``deploy/dask/controller_config.py``, the CRDs and RBAC of
  ``deploy/dask/``): turns DaskCluster resources into scheduler and worker pods in the VO
  namespaces;
- Traefik in front (Service ``dask-gateway``: 8000 for clients' HTTP, 8786 for scheduler
  traffic), routed by the controller.

Users are the hub's (the hub's ``dask-gateway`` service, jupyterhub_config.py); options, sizes
and the one quota come from the hub's facility file, through the hub. The token is the one the
hub's service entry holds (the Secret ``dask-gateway-token``, as ``$DASK_GATEWAY_HUB_TOKEN``).
"""

import os
from pathlib import Path

c = get_config()  # type: ignore[name-defined]  # noqa: F821
here = Path(__file__).resolve().parent


def setting(variable: str, production: str) -> str:
    """``production``, unless the environment sets ``variable`` (tests)."""
    return os.environ.get(variable) or production


HUB_API = setting("AF_SITE_HUB_API_URL", "http://hub.jupyterhub.svc:8081/hub/api")
TOKEN = os.environ.get("DASK_GATEWAY_HUB_TOKEN", "")  # the hub's dask-gateway service token

c.DaskGateway.address = setting("AF_SITE_GATEWAY_API", "0.0.0.0:8000")  # the API (Traefik's target)

# who: the hub's users, with their VOs, groups and directory uid/gid as the spawner sees them
c.DaskGateway.authenticator_class = "afdask.auth.AFHubAuthenticator"
c.JupyterHubAuthenticator.jupyterhub_api_url = HUB_API
c.JupyterHubAuthenticator.jupyterhub_api_token = TOKEN
c.JupyterHubAuthenticator.jupyterhub_service_name = "dask-gateway"  # access:services!service=...

# what and how much: the hub's facility file (the COFFEA-DASK flavor's `dask` block), the
# hub's quota ledger; pods in the VO's namespace with the flavor's image and volumes (CVMFS,
# the Ceph home), the person's uid/gid and their token
c.DaskGateway.backend_class = "afdask.kube_backend.AFKubeBackend"
c.AFKubeBackend.facility_file = str(here.parent.parent / "facilities" / "fermilab-eaf.yaml")
c.AFKubeBackend.hub_api_url = HUB_API
c.AFKubeBackend.hub_api_token = TOKEN
c.AFKubeBackend.lease_renew_period = 60
c.AFKubeBackend.allow_root = False
c.AFKubeBackend.default_namespace = setting("AF_SITE_DASK_NAMESPACE", "eaf-dask")

# dask-gateway's own settings, as usual (the controller's gateway_instance is the same)
c.AFKubeBackend.gateway_instance = "af-dask"
c.AFKubeBackend.api_url = setting(  # where schedulers reach the API (heartbeats)
    "AF_SITE_GATEWAY_API_URL", "http://dask-gateway-api.jupyterhub.svc:8000/api"
)
c.ClusterConfig.idle_timeout = 8 * 3600  # the notebooks' 8 h idle limit, for clusters too
