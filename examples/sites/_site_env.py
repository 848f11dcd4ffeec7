"""Test-bed overrides shared by the site configurations in examples/sites/<site>/.

Each ``jupyterhub_config.py`` there writes the site's production values (issuers, LDAP servers,
paths) literally and passes each through :func:`setting`, which returns the production value
unless the named ``AF_SITE_*`` environment variable is set. Only the test bed sets them
(tests/integration/test_sites.py); a production hub sets none, and an operator who copies a
site directory may delete this module and the ``setting(...)`` calls.

Variables (each replaces one production value):

- ``AF_SITE_STATE_DIR``: the hub's persistent directory (``/srv/jupyterhub``: database, cookie
  secret, name bindings, uid pool);
- ``AF_SITE_SECRETS_DIR``: client secrets, LDAP bind password, Prometheus token
  (``/etc/jupyterhub/secrets``);
- ``AF_SITE_PUBLIC_URL``: the hub's public URL (OIDC redirect URIs are built from it);
- ``AF_SITE_ISSUER_<IDP>``: the issuer of OIDC IdP ``<idp>`` (upper case, ``-`` → ``_``:
  ``AF_SITE_ISSUER_ESCAPE_IAM``);
- ``AF_SITE_LDAP_URL`` (comma-separated), ``AF_SITE_LDAP_CA_FILE``, ``AF_SITE_LDAP_BASE``: the
  LDAP servers, their CA bundle, the directory suffix of the bind DN and search bases;
- ``AF_SITE_KUBECONFIG``: a kubeconfig (production: the in-cluster ServiceAccount);
- ``AF_SITE_GITHUB_STANDIN``: an OIDC issuer that replaces GitHub, reached through
  oauthenticator's GenericOAuthenticator (GitHub cannot be reached from the test bed).

The servers' namespace comes from ``POD_NAMESPACE`` as in any deployment (docs/spawner.md).
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any


def setting(variable: str, production: str) -> str:
    """``production``, unless the test bed sets ``variable``."""
    return os.environ.get(variable) or production


def issuer(idp: str, production: str | None = None) -> dict[str, str]:
    """``{"issuer": ...}`` for an IdP entry: the test bed's issuer if it sets one, else
    ``production`` (``None``: the preset's default issuer, CERN's or CILogon's)."""
    name = "AF_SITE_ISSUER_" + idp.upper().replace("-", "_")
    value = os.environ.get(name) or production
    return {"issuer": value} if value else {}


def ldap_servers(production: Sequence[str]) -> list[str]:
    value = os.environ.get("AF_SITE_LDAP_URL")
    return [s.strip() for s in value.split(",") if s.strip()] if value else list(production)


def ldap_ca_file(production: str | None = None) -> dict[str, str]:
    """``{"ca_file": ...}`` for an LDAP IdP: the test bed's CA, else ``production`` (``None``:
    the system's CA bundle)."""
    value = os.environ.get("AF_SITE_LDAP_CA_FILE") or production
    return {"ca_file": value} if value else {}


def ldap_dn(dn: str, production_base: str) -> str:
    """``dn`` (which ends in ``production_base``) with the test bed's suffix, if it sets one."""
    base = os.environ.get("AF_SITE_LDAP_BASE")
    if not base or not dn.endswith(production_base):
        return dn
    return dn[: len(dn) - len(production_base)] + base


def kubeconfig() -> dict[str, str]:
    """``{"kubeconfig": ...}`` for ``backend_options`` when the test bed sets one; production
    hubs run in the cluster and use their ServiceAccount."""
    value = os.environ.get("AF_SITE_KUBECONFIG")
    return {"kubeconfig": value} if value else {}


def github_standin(github: Mapping[str, Any]) -> dict[str, Any]:
    """The GitHub IdP entry, or (test bed only) the same entry with GenericOAuthenticator
    against an OIDC issuer: same name, client id, secret file, team gate and group names
    (the stand-in releases ``org:team`` strings in its ``groups`` claim), so the site's mapping
    rules and uid sources apply unchanged."""
    standin = os.environ.get("AF_SITE_GITHUB_STANDIN")
    if not standin:
        return dict(github)
    url = standin.rstrip("/") + "/.well-known/openid-configuration"
    if not url.startswith(("http://127.", "https://")):
        raise ValueError(f"AF_SITE_GITHUB_STANDIN: not a loopback or https issuer: {standin}")
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - checked above
        doc = json.load(response)
    options = github["options"]
    return {
        **{k: v for k, v in github.items() if k not in ("class", "options")},
        "class": "generic",
        "options": {
            "client_id": options["client_id"],
            "authorize_url": doc["authorization_endpoint"],
            "token_url": doc["token_endpoint"],
            "userdata_url": doc["userinfo_endpoint"],
            "basic_auth": True,
            "scope": ["openid", "profile", "email"],
            "username_claim": "preferred_username",
            "auth_state_groups_key": "oauth_user.groups",
            "allowed_groups": sorted(options.get("allowed_organizations", [])),
        },
    }
