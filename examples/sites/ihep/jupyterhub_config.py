"""IHEP Jupyter service (Computing Center, IHEP, CAS), from seed 002. See README.md.

The page's prototype: JupyterHub in front of a two-server Kubernetes cluster, users of several
experiments (BESIII, JUNO, LHAASO), ROOT 6 in each user's own space, the software stack on
AFS; ../../facilities/ihep.yaml. Users sign in with their IHEP computing account (the
directory also behind SSH logins), and their servers run with that account's uid/gid.
"""

import sys
from pathlib import Path

from afspawner import facility_page
from afspawner.hubcull import stop_notices

c = get_config()  # type: ignore[name-defined]  # noqa: F821
here = Path(__file__).resolve().parent
sys.path.insert(0, str(here.parent))
from _site_env import kubeconfig, ldap_ca_file, ldap_dn, ldap_servers, setting  # noqa: E402

state = Path(setting("AF_SITE_STATE_DIR", "/srv/jupyterhub"))
secrets = Path(setting("AF_SITE_SECRETS_DIR", "/etc/jupyterhub/secrets"))
BASE = "dc=ihep,dc=ac,dc=cn"  # the IHEP directory (assumed: the page names no server)

# --- the hub -------------------------------------------------------------------------------------
c.JupyterHub.public_url = setting("AF_SITE_PUBLIC_URL", "https://jupyter.ihep.ac.cn/")
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
# "Users can start Jupyter and ROOT 6 in their own space": one server each (the cluster is
# two blade servers; the facility file caps every user at one server).
c.JupyterHub.allow_named_servers = False
c.JupyterHub.template_vars = {"announcement_home": stop_notices}

# --- who: the IHEP computing account -------------------------------------------------------------
c.JupyterHub.authenticator_class = "af"
c.AFAuthenticator.binding_db = str(state / "afauth-bindings.sqlite")
c.AFAuthenticator.idps = [
    {
        "name": "ihep",
        "type": "ldap",
        "display_name": "IHEP computing account",
        "servers": ldap_servers(["ldaps://ldap.ihep.ac.cn"]),
        **ldap_ca_file(),  # the system's CA bundle
        "bind_dn": ldap_dn(f"cn=jupyterhub,ou=Services,{BASE}", BASE),
        "bind_password_file": str(secrets / "ldap-bind-password"),
        "user_search_base": ldap_dn(f"ou=People,{BASE}", BASE),
        "group_search_base": ldap_dn(f"ou=Groups,{BASE}", BASE),
    },
]
c.AFAuthenticator.vos = ["bes3", "juno", "lhaaso"]
c.AFAuthenticator.allowed_vos = {"bes3", "juno", "lhaaso"}  # "several experiments"
c.AFAuthenticator.mapping = [
    # the experiments' POSIX groups are the VOs
    {
        "idp": "ihep",
        "claim": "posix_groups",
        "match": "bes3|juno|lhaaso",
        "vo": "{value}",
        "group": "{value}",
    },
    {"idp": "ihep", "claim": "ldap_groups", "value": "jupyter-admins", "admin": True},
]

# --- what: the facility file on the two-server cluster -------------------------------------------
c.JupyterHub.spawner_class = "af"
c.AFSpawner.facility_file = str(here / ".." / ".." / "facilities" / "ihep.yaml")
c.AFSpawner.backend = "kubernetes"
c.AFSpawner.backend_options = {**kubeconfig()}
# "Unified data access between SSH and Web": the directory's uidNumber/gidNumber and
# groups, as on the login nodes, so AFS and home files have the same owner in both. An
# account without POSIX attributes is refused, never given another uid.
c.AFSpawner.uid_sources = ["auth_state"]
c.AFSpawner.default_url = "/lab"
c.AFSpawner.start_timeout = 300
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
