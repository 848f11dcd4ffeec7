"""Pure helpers of the ``oauthenticator`` IdP type: which class, which options, which groups.

Nothing here talks to a provider. :mod:`afauth.idps.oauth` wraps an oauthenticator class
instance and calls these to check a site's ``options`` at hub start (with key paths, through
:mod:`afcore.issues` by way of ``IdentityProvider.validate``) and to turn what the wrapped class
fetched (its auth_state: user info, GitHub teams, Google or Globus groups) into the IdP's group
names.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Mapping
from typing import Any

from traitlets import TraitError

from afauth.mapping import flatten, lookup

#: Short names of oauthenticator classes (``class: github``); a dotted path also works.
CLASSES: Mapping[str, str] = {
    "github": "oauthenticator.github:GitHubOAuthenticator",
    "gitlab": "oauthenticator.gitlab:GitLabOAuthenticator",
    "google": "oauthenticator.google:GoogleOAuthenticator",
    "azuread": "oauthenticator.azuread:AzureAdOAuthenticator",
    "globus": "oauthenticator.globus:GlobusOAuthenticator",
    "generic": "oauthenticator.generic:GenericOAuthenticator",
    "bitbucket": "oauthenticator.bitbucket:BitbucketOAuthenticator",
    "auth0": "oauthenticator.auth0:Auth0OAuthenticator",
    "openshift": "oauthenticator.openshift:OpenShiftOAuthenticator",
}
ALIASES: Mapping[str, str] = {"generic-oauth": "generic", "azure": "azuread"}

#: The stable identifier (binding subject) each class's user info carries.
SUBJECT_CLAIMS: Mapping[str, str] = {
    "GitHubOAuthenticator": "id",  # numeric, survives renames of the login
    "GitLabOAuthenticator": "id",
    "GoogleOAuthenticator": "sub",
    "AzureAdOAuthenticator": "oid",  # the object id in the tenant
    "GlobusOAuthenticator": "sub",
    "BitbucketOAuthenticator": "uuid",
    "Auth0OAuthenticator": "sub",
    "OpenShiftOAuthenticator": "metadata.uid",
}

#: Options of the wrapped class that the hub handles itself: refused, with where to say it.
HUB_SETTINGS: Mapping[str, str] = {
    "admin_users": "grant admin with a mapping rule ('admin': true) or "
    "c.AFAuthenticator.admin_users",
    "admin_groups": "grant admin with a mapping rule ('admin': true)",
    "admin_google_groups": "grant admin with a mapping rule on the 'groups' claim",
    "admin_globus_groups": "grant admin with a mapping rule on the 'groups' claim",
    "oauth_callback_url": "set 'redirect_uri' on the IdP entry "
    "(default /hub/login/<name>/callback)",
    "enable_auth_state": "a setting of c.AFAuthenticator (always on)",
    "manage_groups": "hub groups come from c.AFAuthenticator.mapping rules",
    "manage_roles": "roles come from c.AFAuthenticator.managed_roles and mapping rules",
    "auto_login": "a setting of c.Authenticator",
    "refresh_pre_spawn": "a setting of c.AFAuthenticator (on)",
    "auth_refresh_age": "a setting of c.Authenticator",
    "post_auth_hook": "a setting of c.Authenticator",
    "refresh_user_hook": "refresh is done by the hub (see docs/idps/oauthenticator.md)",
    "allow_existing_users": "existing hub users are bound by their first login",
    "login_service": "set 'display_name' on the IdP entry",
    "logout_redirect_url": "not used: the hub's logout page is used",
}

#: Options naming where the wrapped class finds groups in its auth_state.
GROUP_KEYS = ("auth_state_groups_key", "claim_groups_key", "user_groups_claim")


class UnknownClass(ValueError):
    """``class`` names no oauthenticator class."""


def resolve_class(name: str) -> type[Any]:
    """The oauthenticator class called ``name`` (a short name or ``module:Class``)."""
    from oauthenticator.oauth2 import OAuthenticator  # type: ignore[import-untyped]

    short = ALIASES.get(name, name)
    path = CLASSES.get(short) or name
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if "mediawiki" in path.lower() or attr.startswith("MW"):  # OAuth 1, its own handlers
        raise UnknownClass("MediaWiki (OAuth 1) cannot be wrapped; use its own authenticator")
    if not module_name or not attr:
        known = ", ".join(sorted(CLASSES))
        raise UnknownClass(f"unknown class '{name[:80]}'; use one of {known} or 'module:Class'")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UnknownClass(f"cannot import '{path[:120]}': {type(exc).__name__}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, OAuthenticator)):
        raise UnknownClass(f"'{path[:120]}' is not an oauthenticator.OAuthenticator subclass")
    return cls


def subject_claim(cls: type[Any], configured: object) -> str:
    """Where the stable id is: ``configured``, the class's usual one, else ``sub``."""
    if isinstance(configured, str) and configured:
        return configured
    for klass in cls.__mro__:
        if klass.__name__ in SUBJECT_CLAIMS:
            return SUBJECT_CLAIMS[klass.__name__]
    return "sub"


def _own_options(cls: type[Any]) -> list[str]:
    """Configurable traits the oauthenticator classes add (not JupyterHub's base ones)."""
    from jupyterhub.auth import Authenticator

    base = set(Authenticator.class_trait_names(config=True))
    return sorted(set(cls.class_trait_names(config=True)) - base)


def check_options(cls: type[Any], options: Mapping[str, object]) -> list[tuple[str, str]]:
    """Problems of ``options`` (traitlets config of ``cls``) as ``(key path, message)``:
    unknown or hub-handled options, and values the traits refuse."""
    problems: list[tuple[str, str]] = []
    known = set(cls.class_trait_names(config=True))
    traits = cls.class_traits(config=True)
    probe = None
    for key, value in options.items():
        path = f"options.{key}"
        if key in HUB_SETTINGS:
            problems.append((path, f"not used by a wrapped authenticator: {HUB_SETTINGS[key]}"))
            continue
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            allowed = ", ".join(o for o in _own_options(cls) if o not in HUB_SETTINGS)
            problems.append((path, f"unknown option for {cls.__name__}; {hint}allowed: {allowed}"))
            continue
        if probe is None:
            probe = cls()
        try:
            traits[key].validate(probe, value)
        except (TraitError, ValueError, TypeError) as exc:
            problems.append((path, _short_error(exc, key, value)))
    return problems


def _short_error(exc: Exception, key: str, value: object) -> str:
    """traitlets' message, without echoing secrets and not too long."""
    if "secret" in key:
        return f"wrong type for {key}: {type(value).__name__}"
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


def restricts_access(options: Mapping[str, object]) -> bool:
    """Whether the site set an allow option of the wrapped class (``allowed_organizations``,
    ``allowed_groups``, ...) or ``allow_all`` itself; otherwise the wrapper lets the wrapped
    class allow everyone and the hub's own allow rules decide."""
    return any(k.startswith("allowed_") or k == "allow_all" for k in options)


def github_groups(teams: object, orgs: object = ()) -> list[str]:
    """GitHub organisations and teams as ``org`` and ``org:team`` (team slugs, as in
    ``allowed_organizations``), from the ``/user/teams`` and ``/user/orgs`` payloads."""
    out: set[str] = set()
    for team in teams if isinstance(teams, list) else []:
        if not isinstance(team, Mapping):
            continue
        org = team.get("organization")
        login = org.get("login") if isinstance(org, Mapping) else None
        slug = team.get("slug")
        if isinstance(login, str) and login:
            out.add(login)
            if isinstance(slug, str) and slug:
                out.add(f"{login}:{slug}")
    for org in orgs if isinstance(orgs, list) else []:
        login = org.get("login") if isinstance(org, Mapping) else None
        if isinstance(login, str) and login:
            out.add(login)
    return sorted(out)


def default_groups(auth_state: Mapping[str, Any], user_key: str) -> list[str]:
    """The provider's groups in an oauthenticator auth_state: GitHub teams and organisations,
    Globus groups, Google groups, else a ``groups`` list in the user info."""
    user = auth_state.get(user_key)
    user = user if isinstance(user, Mapping) else {}
    if "teams" in auth_state or "organizations" in auth_state:
        return github_groups(auth_state.get("teams"), auth_state.get("organizations"))
    for values in (auth_state.get("globus_groups"), user.get("google_groups")):
        if isinstance(values, list):
            return sorted(set(flatten(values)))
    return sorted(set(flatten(lookup(user, "groups"))))


def email_verified(user_info: Mapping[str, Any]) -> bool:
    """Whether the provider vouches for ``email`` (OIDC ``email_verified``, Google's
    ``verified_email``); GitHub's user payload says nothing, so its e-mail is not trusted."""
    for key in ("email_verified", "verified_email"):
        value = user_info.get(key)
        if value is True or (isinstance(value, str) and value.lower() == "true"):
            return True
    return False
