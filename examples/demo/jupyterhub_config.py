"""The demo hub of `scripts/demo`: dev IdP (INSECURE, demo only) + local backend.

Users: ada (CMS, approved for GPUs, uid 50001), bob (DUNE, uid from the account pool),
cleo (CMS and DUNE, manages DUNE), olga (the operator: hub admin), any password. Open
http://127.0.0.1:8000 after `scripts/demo`; the "Facility" link in the top bar shows your
allowance in each of your experiments (olga sees every VO and user there).

Dask: the hub runs dask-gateway-server as its service "dask-gateway" (dask_gateway_config.py);
in a "CMS analysis" notebook, `dask_gateway.Gateway()` works with no arguments and its
clusters count against the CMS quota with the notebooks (facility.yaml).
"""

import os
import sys
from pathlib import Path

from afspawner import daskapi, facility_page

c = get_config()  # type: ignore[name-defined]  # noqa: F821
here = Path(__file__).resolve().parent
state = Path(os.environ.get("AF_DEMO_DIR", Path.home() / ".cache" / "jupyterhub-af" / "demo"))

c.JupyterHub.bind_url = os.environ.get("AF_DEMO_URL", "http://127.0.0.1:8000")
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ.get("AF_DEMO_HUB_PORT", "8081"))
c.ConfigurableHTTPProxy.api_url = os.environ.get("AF_DEMO_PROXY_API", "http://127.0.0.1:8001")
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "cookie_secret")
c.ConfigurableHTTPProxy.pid_file = str(state / "proxy.pid")
c.JupyterHub.allow_named_servers = True

# --- who: the insecure demo IdP, mapped to hub groups and VOs ----------------------------
c.JupyterHub.authenticator_class = "af"
c.AFAuthenticator.allow_insecure_dev_idp = True
c.AFAuthenticator.enable_auth_state = True  # carries uid/gid and VOs to the spawner
c.AFAuthenticator.allow_all = True
c.AFAuthenticator.binding_db = str(state / "afauth-bindings.sqlite")
c.AFAuthenticator.idps = [
    {
        "name": "demo",
        "type": "dev",
        "display_name": "Demo sign-in (any password)",
        "users": {
            "ada": {"groups": ["cms", "gpu-approved"], "uid": 50001, "gid": 5063},
            "bob": {"groups": ["dune"]},
            "cleo": {"groups": ["cms", "dune", "dune-managers"]},
            "olga": {"groups": ["af-admins"]},
        },
    },
]
c.AFAuthenticator.mapping = [
    {"idp": "demo", "claim": "groups", "match": "cms|dune", "vo": "{value}", "group": "{value}"},
    {"idp": "demo", "claim": "groups", "value": "gpu-approved", "group": "gpu-approved"},
    {"idp": "demo", "claim": "groups", "value": "af-admins", "admin": True},
    {"idp": "demo", "claim": "groups", "value": "dune-managers", "role": "vo-manager-dune"},
]
# a VO manager sees the usage of their VO's users on the facility page
c.AFAuthenticator.vos = ["cms", "dune"]
c.AFAuthenticator.managed_roles = [
    {
        "name": "vo-manager-{vo}",
        "description": "see the quota use of VO {vo} and its users",
        "scopes": ["custom:af-facility:read!group={vo}"],
    },
]

# --- what: flavors by VO, quotas, local processes ------------------------------------------
c.JupyterHub.spawner_class = "af"
c.AFSpawner.facility_file = str(here / "facility.yaml")
c.AFSpawner.backend = "local"
c.AFSpawner.backend_options = {
    "root_dir": str(state / "servers"),
    # Demo only: servers run as the hub's own user, without isolation. A real single-machine
    # site runs the hub as root with a Python every user can execute, and drops this option:
    # the local backend then switches to each user's uid/gid.
    "run_as_hub_user": True,
}
if os.geteuid() == 0:  # e.g. a container: Jupyter refuses root unless told
    c.AFSpawner.args = ["--allow-root"]
c.AFSpawner.uid_sources = ["auth_state", "pool"]
c.AFSpawner.uid_pool_file = str(state / "uid-pool.json")
c.AFSpawner.uid_pool_range = [60000, 60999]
c.AFSpawner.uid_pool_gid = 60000
c.AFSpawner.default_url = "/lab"
c.AFSpawner.start_timeout = 60

# --- the facility page (/hub/facility, JSON at /hub/api/facility) -------------------------
facility_page.setup(c)

# --- Dask: dask-gateway-server as a hub-managed service, under the facility's quota --------
gateway_port = os.environ.get("AF_DEMO_GATEWAY_PORT", "8786")
gateway_api_port = os.environ.get("AF_DEMO_GATEWAY_API_PORT", "8788")
daskapi.setup(c)  # /hub/api/af/dask/... for the gateway, scope custom:af-dask:lease
c.JupyterHub.services = [
    {
        "name": "dask-gateway",
        # the hub starts it with its own token in JUPYTERHUB_API_TOKEN
        "command": [
            str(Path(sys.executable).parent / "dask-gateway-server"),
            "-f",
            str(here / "dask_gateway_config.py"),
        ],
        "cwd": str(state),
        "environment": {
            "AF_DEMO_DIR": str(state),
            "AF_DEMO_GATEWAY_PORT": gateway_port,
            "AF_DEMO_GATEWAY_API_PORT": gateway_api_port,
        },
    },
]
c.JupyterHub.load_roles = [
    # the gateway reserves and releases Dask workers in the hub's quota ledger
    {"name": "dask-gateway", "scopes": [daskapi.SCOPE], "services": ["dask-gateway"]},
    # servers' tokens (what Gateway() uses in a notebook) may be used at the gateway
    {
        "name": "server",
        "scopes": [
            "users:activity!user",
            "access:servers!server",
            "access:services!service=dask-gateway",
        ],
    },
]
# users' own tokens too (added to the default "user" role, like the facility page's scope:
# overriding that role in load_roles would drop the extra scopes)
c.JupyterHub.extra_user_scopes.update({"access:services!service=dask-gateway"})
# Gateway() with no arguments inside a server (DASK_GATEWAY__* in the server's environment)
c.AFSpawner.dask_gateway = {
    "address": f"http://127.0.0.1:{gateway_port}",
    "proxy_address": f"gateway://127.0.0.1:{gateway_port}",
}
