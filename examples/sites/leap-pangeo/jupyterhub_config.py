"""LEAP-Pangeo JupyterHub (https://leap.2i2c.cloud, run by 2i2c on Google Cloud), from seed 004.
See README.md.

LEAP members sign in with GitHub, as on 2i2c's hubs: membership of teams of the leap-stc
organisation decides who gets in and what they may start; small / medium / large servers with
the Pangeo images or an image of their own ("Other..."); ../../facilities/leap-pangeo.yaml.
"""

import sys
from pathlib import Path

from afspawner import facility_page
from afspawner.hubcull import stop_notices

c = get_config()  # type: ignore[name-defined]  # noqa: F821
here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parent))
from _site_env import github_standin, kubeconfig, setting  # noqa: E402  (test-bed overrides only)

state = Path(setting("AF_SITE_STATE_DIR", "/srv/jupyterhub"))
secrets = Path(setting("AF_SITE_SECRETS_DIR", "/etc/jupyterhub/secrets"))
TEAMS = [
    "leap-stc:leap-pangeo-base-access",
    "leap-stc:leap-pangeo-full-access",
    "leap-stc:leap-pangeo-research",
]

# --- the hub -------------------------------------------------------------------------------------
c.JupyterHub.public_url = setting("AF_SITE_PUBLIC_URL", "https://leap.2i2c.cloud/")
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
c.JupyterHub.allow_named_servers = False  # one server per user (facility file: servers: 1)
c.JupyterHub.template_vars = {"announcement_home": stop_notices}

# --- who: GitHub organisation and teams ----------------------------------------------------------
c.JupyterHub.authenticator_class = "af"
c.AFAuthenticator.binding_db = str(state / "afauth-bindings.sqlite")
github = {
    "name": "github",
    "type": "oauthenticator",
    "class": "github",
    "display_name": "GitHub",
    "client_secret_file": str(secrets / "github-client-secret"),
    "options": {
        "client_id": "Iv1.leap2i2ccloudhub",  # the GitHub OAuth app of the hub
        "scope": ["read:org"],  # team membership, also of private teams
        "allowed_organizations": TEAMS,  # the team gate: members of these teams only
        "populate_teams_in_auth_state": True,
    },
}
c.AFAuthenticator.idps = [github_standin(github)]  # GitHub itself unless the test bed says so
c.AFAuthenticator.allowed_idps = {"github"}  # everyone the team gate lets in
c.AFAuthenticator.vos = ["leap"]
c.AFAuthenticator.mapping = [
    {"idp": "github", "claim": "groups", "value": "leap-stc", "vo": "leap"},
    {
        "idp": "github",
        "claim": "groups",
        "match": "leap-stc:leap-pangeo-(?P<tier>base|full|research)(-access)?",
        "group": "leap-{tier}",
    },
    {"idp": "github", "claim": "groups", "value": "leap-stc:hub-admins", "admin": True},
]

# --- what: the facility file on GKE --------------------------------------------------------------
c.JupyterHub.spawner_class = "af"
c.AFSpawner.facility_file = str(here / ".." / ".." / "facilities" / "leap-pangeo.yaml")
c.AFSpawner.backend = "kubernetes"
c.AFSpawner.backend_options = {**kubeconfig()}
# GitHub has no POSIX accounts: a pool uid per person, recorded on the hub's disk; their home
# disk is theirs through fsGroup. (2i2c runs every server as jovyan, uid 1000.)
c.AFSpawner.uid_sources = ["pool"]
c.AFSpawner.uid_pool_file = str(state / "uid-pool.json")
c.AFSpawner.uid_pool_range = [60000, 69999]
c.AFSpawner.uid_pool_gid = 100
c.AFSpawner.pass_bearer_token = False  # a GitHub token has no business inside the servers
c.AFSpawner.default_url = "/lab"
c.AFSpawner.start_timeout = 900  # Pangeo images are several GB; a new node may also be added
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
