"""UCSD CMS T2 JupyterHub (https://jupyter.t2.ucsd.edu), from seed 000. See README.md.

CMS members sign in through CERN SSO, UCSD people with their campus account (through
CILogon); three environments (CMS Data Analysis, Machine Learning, General Purpose) on the
T2's Kubernetes cluster, from ../../facilities/ucsd-cms.yaml.
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
UCSD_IDP = "https://idp.ucsd.edu/idp/shibboleth"  # UC San Diego's SAML entity ID

# --- the hub -------------------------------------------------------------------------------------
c.JupyterHub.public_url = setting("AF_SITE_PUBLIC_URL", "https://jupyter.t2.ucsd.edu/")
c.JupyterHub.db_url = f"sqlite:///{state / 'jupyterhub.sqlite'}"
c.JupyterHub.cookie_secret_file = str(state / "jupyterhub_cookie_secret")
# CMS users may run up to 5 servers at once (facility file: per_user.servers): the default
# one plus 4 named ones, within the same 8-core / 32 GB allowance.
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = 4
# CMS servers run in the VO namespace af-cms and reach the hub by its Service's full name
c.JupyterHub.hub_connect_url = "http://hub.jupyterhub.svc.cluster.local:8081"
# why the hub stopped a server, on the home page
c.JupyterHub.template_vars = {"announcement_home": stop_notices}

# --- who: "Log in with your UCSD credentials; for CMS users, select the CERN option" -------------
c.JupyterHub.authenticator_class = "af"
c.AFAuthenticator.binding_db = str(state / "afauth-bindings.sqlite")
c.AFAuthenticator.idps = [
    {
        "name": "cern",
        "type": "cern",
        "display_name": "CERN",
        **issuer("cern"),  # https://auth.cern.ch/auth/realms/cern (the preset's)
        "client_id": "ucsd-t2-jupyterhub",
        "client_secret_file": str(secrets / "cern-client-secret"),
        # the application's roles (CERN Application Portal): only CMS members get in
        "require_groups": ["cms-users"],
    },
    {
        "name": "ucsd",
        "type": "cilogon",
        "display_name": "UC San Diego",
        **issuer("ucsd"),  # https://cilogon.org (the preset's)
        "client_id": "cilogon:/client_id/ucsd-t2-jupyterhub",
        "client_secret_file": str(secrets / "cilogon-client-secret"),
        # only UCSD's own login page is offered; jdoe@ucsd.edu signs in as jdoe
        "allowed_idps": {UCSD_IDP: {"strip_domain": "ucsd.edu"}},
    },
]
c.AFAuthenticator.vos = ["cms", "ucsd"]
c.AFAuthenticator.allowed_vos = {"cms", "ucsd"}
c.AFAuthenticator.mapping = [
    {"idp": "cern", "claim": "cern_roles", "value": "cms-users", "vo": "cms", "group": "cms"},
    {"idp": "ucsd", "claim": "idp", "value": UCSD_IDP, "vo": "ucsd", "group": "ucsd"},
    # "GPU access requires justification and approval": T2 support grants the CERN
    # application role gpu-approved (the facility's GPU classes require this hub group)
    {"idp": "cern", "claim": "cern_roles", "value": "gpu-approved", "group": "gpu-approved"},
    {"idp": "cern", "claim": "cern_roles", "value": "t2-admins", "admin": True},
]

# --- what: the facility file, on the T2's cluster ------------------------------------------------
c.JupyterHub.spawner_class = "af"
c.AFSpawner.facility_file = str(here / ".." / ".." / "facilities" / "ucsd-cms.yaml")
c.AFSpawner.backend = "kubernetes"
c.AFSpawner.backend_options = {**kubeconfig()}  # namespace: $POD_NAMESPACE; CMS: af-cms
# Neither CERN SSO nor CILogon carries a POSIX account: every user gets a pool account,
# recorded once on the hub's volume, so files in /ceph/cms/store/user/<name> stay theirs.
c.AFSpawner.uid_sources = ["pool"]
c.AFSpawner.uid_pool_file = str(state / "uid-pool.json")
c.AFSpawner.uid_pool_range = [70000, 79999]
c.AFSpawner.uid_pool_gid = 70000
c.AFSpawner.default_url = "/lab"
c.AFSpawner.start_timeout = 600  # CMSSW images are large: first pulls take minutes
# Idle policy: the page names none, and neither does the facility file; the hub's check
# stays on (its default, every 60 s) so adding `idle:` to the file is all it takes.
c.AFSpawner.idle_check_interval = 60

# --- operations: the facility page, and Prometheus metrics at /hub/metrics -----------------------
facility_page.setup(c)
c.JupyterHub.authenticate_prometheus = True
c.JupyterHub.services = [
    {"name": "prometheus", "api_token": (secrets / "prometheus-token").read_text().strip()},
]
c.JupyterHub.load_roles = [
    {"name": "metrics", "scopes": ["read:metrics"], "services": ["prometheus"]},
]
