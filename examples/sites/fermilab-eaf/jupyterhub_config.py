"""Fermilab Elastic Analysis Facility (https://analytics-hub.fnal.gov), from seed 003.
See README.md.

"Use your Fermi SERVICES domain credentials to log in"; "UID/GID will be propagated to the
notebook in order to preserve permissions"; a default server plus 5 named servers;
"Inactive/Idle notebooks will be automatically stopped after 8 hours"; the catalog of
../../facilities/fermilab-eaf.yaml.
"""

import sys
from pathlib import Path

from afspawner import daskapi, facility_page
from afspawner.hubcull import stop_notices

c = get_config()  # type: ignore[name-defined]  # noqa: F821
here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parent))
from _site_env import kubeconfig, ldap_ca_file, ldap_servers, setting  # noqa: E402  (test bed)

state = Path(setting("AF_SITE_STATE_DIR", "/srv/jupyterhub"))
secrets = Path(setting("AF_SITE_SECRETS_DIR", "/etc/jupyterhub/secrets"))
EXPERIMENTS = "cms|dune|fife|astro|accel-ai|mu2e"  # directory groups named like the VOs

# --- the hub -------------------------------------------------------------------------------------
c.JupyterHub.public_url = setting("AF_SITE_PUBLIC_URL", "https://analytics-hub.fnal.gov/")
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
# "In addition to your default server, you may have additional 5 server(s) with names."
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = 5
# the reason an idle server was stopped ("... after 8h without activity"), on the home page
c.JupyterHub.template_vars = {"announcement_home": stop_notices}

# --- who: Fermi SERVICES accounts ----------------------------------------------------------------
c.JupyterHub.authenticator_class = "af"
c.AFAuthenticator.binding_db = str(state / "afauth-bindings.sqlite")
fnal = {
    "name": "fnal",
    "type": "ldap",
    "display_name": "Fermi SERVICES account",
    "servers": ldap_servers(["ldaps://ldap1.fnal.gov", "ldaps://ldap2.fnal.gov"]),
    **ldap_ca_file(),  # the system's CA bundle
    "bind_dn": "cn=eaf-hub,ou=Services,dc=fnal,dc=gov",
    "bind_password_file": str(secrets / "ldap-bind-password"),
    "user_search_base": "ou=People,dc=fnal,dc=gov",
    "group_search_base": "ou=Groups,dc=fnal,dc=gov",
    # the facility's access list (beta users)
    "require_groups": ["eaf-users"],
}
# Optional: a Kerberos ticket of the user's FNAL.GOV principal at login, renewed by the hub and
# given to the servers as $KRB5CCNAME (docs/idps/ldap.md). The page does not mention one; turn it
# on where the SERVICES password is also the Kerberos password of the principal.
GET_KERBEROS_TICKETS = False
if GET_KERBEROS_TICKETS:
    fnal["kerberos"] = {"realm": "FNAL.GOV", "lifetime": "26h", "renew_lifetime": "7d"}
c.AFAuthenticator.idps = [fnal]
c.AFAuthenticator.vos = EXPERIMENTS.split("|")
c.AFAuthenticator.mapping = [
    {
        "idp": "fnal",
        "claim": "posix_groups",
        "match": EXPERIMENTS,
        "vo": "{value}",
        "group": "{value}",
    },
    {"idp": "fnal", "claim": "ldap_groups", "value": "eaf-admins", "admin": True},
]
c.AFAuthenticator.allowed_idps = {"fnal"}  # anyone in eaf-users (require_groups above)

# --- what: the catalog, on the EAF's Kubernetes (OKD) cluster ------------------------------------
c.JupyterHub.spawner_class = "af"
c.AFSpawner.facility_file = str(here / ".." / ".." / "facilities" / "fermilab-eaf.yaml")
c.AFSpawner.backend = "kubernetes"
c.AFSpawner.backend_options = {**kubeconfig()}
# "UID/GID will be propagated to the notebook": the directory's uidNumber/gidNumber and its
# POSIX groups; an account without them is refused rather than given another uid.
c.AFSpawner.uid_sources = ["auth_state"]
# "GPU availability is on a first come, first serve basis. If you request a notebook with a
# GPU and it times out, please try again later": refuse at once when none is free.
c.AFSpawner.gpu_wait = "refuse"
c.AFSpawner.default_url = "/lab"
c.AFSpawner.start_timeout = 600
# The 8 h idle limit is the facility file's `idle: {timeout: 8h}`; the hub checks it every
# minute against JupyterHub's activity records (no separate idle-culler service needed).
c.AFSpawner.idle_check_interval = 60

# --- operations ----------------------------------------------------------------------------------
facility_page.setup(c)
c.JupyterHub.authenticate_prometheus = True
c.JupyterHub.services = [
    {"name": "prometheus", "api_token": (secrets / "prometheus-token").read_text().strip()},
    # The COFFEA-DASK flavor's Dask clusters (its `dask` block in the facility file): the
    # gateway of dask_gateway_config.py, in its own Deployment, holds the same token (Secret
    # dask-gateway-token) and reserves its workers in this hub's quota ledger.
    {"name": "dask-gateway", "api_token": (secrets / "dask-gateway-token").read_text().strip()},
]
daskapi.setup(c)  # /hub/api/af/dask/... (scope custom:af-dask:lease) for the gateway
c.JupyterHub.load_roles = [
    {"name": "metrics", "scopes": ["read:metrics"], "services": ["prometheus"]},
    {"name": "dask-gateway", "scopes": [daskapi.SCOPE], "services": ["dask-gateway"]},
    # the servers' tokens (what dask_gateway.Gateway() uses in a notebook) reach the gateway
    {
        "name": "server",
        "scopes": [
            "users:activity!user",
            "access:servers!server",
            "access:services!service=dask-gateway",
        ],
    },
]
# users' own tokens too (added to the default "user" role, next to the facility page's scope)
c.JupyterHub.extra_user_scopes.update({"access:services!service=dask-gateway"})
# Gateway() with no arguments in every server: the gateway's in-cluster Service
c.AFSpawner.dask_gateway = {
    "address": "http://dask-gateway.jupyterhub.svc:8000",
    "proxy_address": "gateway://dask-gateway.jupyterhub.svc:8786",
}
