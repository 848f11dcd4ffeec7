"""The default accounts of each issuer profile, with the claims the real IdPs put in tokens."""

from __future__ import annotations

import uuid

from testbed.oidc.model import DEFAULT_CLIENT_ID, JSON, OIDCUser

__all__ = ["default_users", "stable_uuid"]


def stable_uuid(issuer: str, username: str) -> str:
    """The same UUID for the same issuer and user name, in every run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://af-testbed.invalid/{issuer}/{username}"))


def _password(username: str) -> str:
    return f"{username}-pw"


_PEOPLE: dict[str, tuple[str, str]] = {
    "cmsuser": ("Carla", "Mendes"),
    "atlasuser": ("Arjun", "Tanaka"),
    "duneuser": ("Dana", "Nwosu"),
    "multiuser": ("Mika", "Virtanen"),
    "afadmin": ("Ada", "Fermi"),
    "unverified": ("Uli", "Novak"),
}


def _person(username: str) -> JSON:
    given, family = _PEOPLE[username]
    return {"given_name": given, "family_name": family, "name": f"{given} {family}"}


def _cern_users() -> dict[str, OIDCUser]:
    roles = {
        "cmsuser": ["default-role", "cms-users"],
        "atlasuser": ["default-role", "atlas-users"],
        "duneuser": ["default-role", "dune-users"],
        "multiuser": ["default-role", "cms-users", "atlas-users"],
        "afadmin": ["default-role", "cms-users", "admin"],
        "unverified": ["default-role", "cms-users"],
    }
    users: dict[str, OIDCUser] = {}
    for number, (username, user_roles) in enumerate(roles.items(), start=1):
        given, family = _PEOPLE[username]
        claims: JSON = {
            **_person(username),
            "preferred_username": username,
            "cern_upn": username,
            "cern_person_id": str(812000 + number),
            "cern_roles": user_roles,
            "resource_access": {DEFAULT_CLIENT_ID: {"roles": user_roles}},
            "email": f"{given.lower()}.{family.lower()}@cern.ch",
            "email_verified": username != "unverified",
        }
        # CERN SSO's subject is the login name.
        users[username] = OIDCUser(username, _password(username), username, claims)
    return users


def _iam_users() -> dict[str, OIDCUser]:
    groups = {
        "cmsuser": ["/cms", "/cms/uscms"],
        "atlasuser": ["/atlas"],
        "duneuser": ["/dune", "/dune/production"],
        "multiuser": ["/cms", "/atlas"],
        "afadmin": ["/cms", "/cms/uscms", "/cms/af-admins"],
        "unverified": ["/cms"],
    }
    users: dict[str, OIDCUser] = {}
    for username, wlcg_groups in groups.items():
        given, family = _PEOPLE[username]
        entitlements = [
            "urn:mace:egi.eu:group:" + g.strip("/").replace("/", ":") + ":role=member#aai.egi.eu"
            for g in wlcg_groups
        ]
        claims: JSON = {
            **_person(username),
            "preferred_username": username,
            "wlcg.ver": "1.0",
            "wlcg.groups": wlcg_groups,
            "groups": [g.lstrip("/") for g in wlcg_groups],
            "eduperson_entitlement": entitlements,
            "email": f"{given.lower()}.{family.lower()}@example.org",
            "email_verified": username != "unverified",
        }
        users[username] = OIDCUser(
            username, _password(username), stable_uuid("iam", username), claims
        )
    return users


_CILOGON_IDPS: dict[str, tuple[str, str, str]] = {
    # username: (entity id, display name, scope)
    "cmsuser": (
        "https://idp.ucsd.edu/idp/shibboleth",
        "University of California, San Diego",
        "ucsd.edu",
    ),
    "atlasuser": ("urn:mace:incommon:uchicago.edu", "University of Chicago", "uchicago.edu"),
    "duneuser": (
        "https://idp.fnal.gov/idp/shibboleth",
        "Fermi National Accelerator Laboratory",
        "fnal.gov",
    ),
    "multiuser": ("https://idp.purdue.edu/idp/shibboleth", "Purdue University", "purdue.edu"),
    "afadmin": (
        "https://idp.ucsd.edu/idp/shibboleth",
        "University of California, San Diego",
        "ucsd.edu",
    ),
    "unverified": (
        "https://idp.ucsd.edu/idp/shibboleth",
        "University of California, San Diego",
        "ucsd.edu",
    ),
}


def _cilogon_users() -> dict[str, OIDCUser]:
    users: dict[str, OIDCUser] = {}
    for number, (username, (entity_id, idp_name, scope)) in enumerate(
        _CILOGON_IDPS.items(), start=1
    ):
        given, family = _PEOPLE[username]
        kind = "staff" if username == "afadmin" else "faculty"
        claims: JSON = {
            **_person(username),
            "idp": entity_id,
            "idp_name": idp_name,
            "eppn": f"{username}@{scope}",
            "eptid": f"{entity_id}!https://cilogon.org/shibboleth!{stable_uuid('eptid', username)}",
            "affiliation": f"member@{scope};{kind}@{scope};employee@{scope}",
            "ou": "Physics",
            "email": f"{given.lower()}.{family.lower()}@{scope}",
            "email_verified": username != "unverified",
        }
        sub = f"http://cilogon.org/serverA/users/{10000 + number}"
        users[username] = OIDCUser(username, _password(username), sub, claims)
    return users


def default_users(profile: str) -> dict[str, OIDCUser]:
    """Fresh default accounts for an issuer profile (``cern``, ``iam`` or ``cilogon``)."""
    factories = {"cern": _cern_users, "iam": _iam_users, "cilogon": _cilogon_users}
    return factories[profile]()
