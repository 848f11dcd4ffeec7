"""ESCAPE Virtual Research Environment notebook service at CERN, from seed 001. See README.md.

"Authenticate to IAM": one IdP, the ESCAPE INDIGO IAM; its groups make the experiments and
science projects (VOs) of ../../facilities/escape-vre.yaml; one server per user.
"""

import sys
from pathlib import Path

from afspawner import facility_page
from afspawner.hubcull import stop_notices

c = get_config()  # type: ignore[name-defined]  # noqa: F821
here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parent))
from _site_env import issuer, kubeconfig, setting  # noqa: E402  (test-bed overrides only)

state = Path(setting("AF_SITE_STATE_DIR", "/srv/jupyterhub"))
secrets = Path(setting("AF_SITE_SECRETS_DIR", "/etc/jupyterhub/secrets"))

# --- the hub -------------------------------------------------------------------------------------
c.JupyterHub.public_url = setting("AF_SITE_PUBLIC_URL", "https://vre-hub.cern.ch/")
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
# "If you want to stop the service and use a different one, go to 'File' > 'Hub control
# panel'; you can stop the server from there": one server per user, no named servers.
c.JupyterHub.allow_named_servers = False
c.JupyterHub.template_vars = {"announcement_home": stop_notices}
# The page's "Hub control panel" shows the logged-in IAM account; skip the login page, there
# is a single IdP.
c.Authenticator.auto_login = True

# --- who: the ESCAPE IAM -------------------------------------------------------------------------
c.JupyterHub.authenticator_class = "af"
c.AFAuthenticator.binding_db = str(state / "afauth-bindings.sqlite")
c.AFAuthenticator.idps = [
    {
        "name": "escape-iam",
        "type": "iam",
        "display_name": "ESCAPE IAM",
        **issuer("escape-iam", "https://iam-escape.cloud.cnaf.infn.it/"),
        "client_id": "escape-vre-jupyterhub",
        "client_secret_file": str(secrets / "escape-iam-client-secret"),
        # offline_access: a refresh token, so the hub keeps the token it hands to the Rucio
        # extension ("OpenID Connect will be selected by default") fresh
        "scope": ["openid", "profile", "email", "wlcg.groups", "offline_access"],
        # readable names (Rucio accounts are IAM user names); the hub binds each name to the
        # IAM subject, so a rename in IAM never hands a name to someone else
        "username_claim": "preferred_username",
    },
]
c.AFAuthenticator.vos = ["escape", "atlas", "eosc-future"]
c.AFAuthenticator.allow_all = True  # every ESCAPE IAM member; the VOs decide the environments
c.AFAuthenticator.mapping = [
    # every IAM member: the default environment
    {
        "idp": "escape-iam",
        "claim": "wlcg.groups",
        "match": "/.*",
        "vo": "escape",
        "group": "escape",
    },
    # experiment and science-project groups: their own environments (scopes such as
    # ATLAS_OD_EDU, ATLAS_LAPP_SP, the EOSC-Future DM/EU projects)
    {
        "idp": "escape-iam",
        "claim": "wlcg.groups",
        "match": "/atlas(/.*)?",
        "vo": "atlas",
        "group": "atlas",
    },
    {
        "idp": "escape-iam",
        "claim": "wlcg.groups",
        "match": "/eosc-future(/.*)?",
        "vo": "eosc-future",
        "group": "eosc-future",
    },
    {"idp": "escape-iam", "claim": "wlcg.groups", "value": "/escape/vre-admins", "admin": True},
]

# --- what: the facility file on CERN's Kubernetes ------------------------------------------------
c.JupyterHub.spawner_class = "af"
c.AFSpawner.facility_file = str(here / ".." / ".." / "facilities" / "escape-vre.yaml")
c.AFSpawner.backend = "kubernetes"
c.AFSpawner.backend_options = {**kubeconfig()}
# IAM carries no POSIX account: pool accounts, all in gid 100 (docker-stacks' "users", the
# group of jovyan), so every user can read and write the one /home/jovyan they share.
c.AFSpawner.uid_sources = ["pool"]
c.AFSpawner.uid_pool_file = str(state / "uid-pool.json")
c.AFSpawner.uid_pool_range = [60000, 64999]
c.AFSpawner.uid_pool_gid = 100
# the IAM access token in $BEARER_TOKEN_FILE, renewed while the server runs (Rucio's OIDC auth)
c.AFSpawner.pass_bearer_token = True
c.AFSpawner.default_url = "/lab"
c.AFSpawner.start_timeout = 600
c.AFSpawner.idle_check_interval = 60  # no limit in the file (the page names none)

# --- operations ----------------------------------------------------------------------------------
facility_page.setup(c)
c.JupyterHub.authenticate_prometheus = True
c.JupyterHub.services = [
    {"name": "prometheus", "api_token": (secrets / "prometheus-token").read_text().strip()},
]
c.JupyterHub.load_roles = [
    {"name": "metrics", "scopes": ["read:metrics"], "services": ["prometheus"]},
]
