"""OIDC sign-in through a MockHub against the real node oidc-provider issuers.

CERN-, IAM- and CILogon-like issuers; each test checks the hub user (name, groups, roles,
admin) and the auth_state contract the spawner reads.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from afauth.state import CONTRACT
from integration.authhub import AuthHub, auth_hub
from testbed.oidc.fixtures import oidc_testbed
from testbed.oidc.model import RECOMMENDED_SCOPES
from testbed.oidc.provider import OIDCTestbed

pytestmark = [pytest.mark.oidc, pytest.mark.hub]

__all__ = ["auth_hub", "oidc_testbed"]

UCSD = "https://idp.ucsd.edu/idp/shibboleth"
FNAL = "https://idp.fnal.gov/idp/shibboleth"

MAPPING: list[dict[str, Any]] = [
    {
        "claim": "wlcg.groups",
        "match": "/(?P<vo>cms|atlas|dune)(/.*)?",
        "vo": "{vo}",
        "group": "{vo}",
    },
    {"claim": "wlcg.groups", "match": "/(?P<vo>cms|atlas)/af-admins", "role": "vo-manager-{vo}"},
    {"claim": "cern_roles", "match": "(?P<vo>cms|atlas|dune)-users", "vo": "{vo}", "group": "{vo}"},
    {"claim": "cern_roles", "value": "admin", "admin": True},
    {"idp": "cilogon", "claim": "affiliation", "match": ".*staff@.*", "group": "staff"},
    {"idp": "cilogon", "claim": "idp", "value": UCSD, "vo": "cms", "group": "ucsd"},
]
ROLES = [
    {
        "name": "vo-manager-{vo}",
        "description": "manage the users and servers of VO {vo}",
        "scopes": ["admin:users!group={vo}", "admin:servers!group={vo}", "read:users!group={vo}"],
    }
]


def idp_config(tb: OIDCTestbed, issuer: str, **over: Any) -> dict[str, Any]:
    info = tb[issuer]
    config: dict[str, Any] = {
        "name": issuer,
        "type": issuer,
        "issuer": info.issuer,
        "client_id": info.client_id,
        "client_secret": info.client_secret,
        "scope": RECOMMENDED_SCOPES[issuer].split(),
    }
    if issuer == "iam":
        config["username_claim"] = "preferred_username"
    if issuer == "cilogon":
        config["allowed_idps"] = {UCSD: {"strip_domain": "ucsd.edu"}, FNAL: None}
    config.update(over)
    return config


def af_config(tb: OIDCTestbed, *issuers: str, **over: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "idps": [idp_config(tb, i) for i in issuers or ("cern", "iam", "cilogon")],
        "mapping": MAPPING,
        "managed_roles": ROLES,
        "vos": ["cms", "atlas", "dune"],
    }
    config.update(over)
    return config


async def userinfo_status(tb: OIDCTestbed, issuer: str, access_token: str) -> int:
    async with httpx.AsyncClient(trust_env=False) as http:
        doc = (await http.get(tb[issuer].discovery_url)).json()
        r = await http.get(
            doc["userinfo_endpoint"], headers={"Authorization": f"Bearer {access_token}"}
        )
        return r.status_code


# -- full logins per IdP type ------------------------------------------------------------------


async def test_cern_sso_login(auth_hub, oidc_testbed: OIDCTestbed) -> None:
    hub: AuthHub = await auth_hub(af_config(oidc_testbed), oidc=oidc_testbed)
    response = await hub.oidc_login(hub.browser(), "cern", "cmsuser")
    assert response.status_code == 302
    assert urlsplit(response.headers["location"]).path == "/af/hub/spawn"
    assert "code=" not in response.headers["location"]
    user = hub.user("cmsuser")
    assert hub.groups_of("cmsuser") == ["cms"]
    assert hub.roles_of("cmsuser") == ["user"]
    assert user.admin is False
    state = await hub.auth_state("cmsuser")
    assert set(CONTRACT) <= set(state)
    assert state["idp"] == "cern" and state["subject"] == "cmsuser"
    assert state["username"] == "cmsuser"
    assert state["email"] == "carla.mendes@cern.ch"
    assert state["uid"] is None and state["gid"] is None
    assert state["groups"] == ["cms"] and state["vos"] == ["cms"]
    assert state["expires_at"] > time.time() + 600
    assert state["refresh_token"] and state["id_token"]
    assert state["idp_groups"] == ["default-role", "cms-users"]
    assert await userinfo_status(oidc_testbed, "cern", state["access_token"]) == 200


async def test_cern_admin_role_claim_makes_a_hub_admin(auth_hub, oidc_testbed) -> None:
    hub: AuthHub = await auth_hub(af_config(oidc_testbed, "cern"), oidc=oidc_testbed)
    assert (await hub.oidc_login(hub.browser(), "cern", "afadmin")).status_code == 302
    assert hub.user("afadmin").admin is True
    assert "admin" in hub.roles_of("afadmin")


async def test_iam_login_groups_vos_and_vo_manager_role(auth_hub, oidc_testbed) -> None:
    hub: AuthHub = await auth_hub(af_config(oidc_testbed, "iam"), oidc=oidc_testbed)
    assert (await hub.oidc_login(hub.browser(), "iam", "afadmin")).status_code == 302
    assert hub.groups_of("afadmin") == ["cms"]
    assert hub.roles_of("afadmin") == ["user", "vo-manager-cms"]
    role = next(r for r in hub.user("afadmin").roles if r.name == "vo-manager-cms")
    assert sorted(role.scopes) == [
        "admin:servers!group=cms",
        "admin:users!group=cms",
        "read:users!group=cms",
    ]
    assert (await hub.oidc_login(hub.browser(), "iam", "multiuser")).status_code == 302
    assert hub.groups_of("multiuser") == ["atlas", "cms"]
    assert hub.roles_of("multiuser") == ["user"]
    state = await hub.auth_state("multiuser")
    assert state["vos"] == ["atlas", "cms"]
    assert state["subject"] == oidc_testbed["iam"].user("multiuser").sub


async def test_iam_default_username_is_the_stable_sub(auth_hub, oidc_testbed) -> None:
    config = af_config(oidc_testbed, "iam")
    config["idps"][0].pop("username_claim")
    hub: AuthHub = await auth_hub(config, oidc=oidc_testbed)
    assert (await hub.oidc_login(hub.browser(), "iam", "duneuser")).status_code == 302
    sub = oidc_testbed["iam"].user("duneuser").sub
    assert hub.user(sub).name == sub
    assert (await hub.auth_state(sub))["vos"] == ["dune"]


async def test_cilogon_allowed_institutions_and_username_from_eppn(auth_hub, oidc_testbed) -> None:
    hub: AuthHub = await auth_hub(af_config(oidc_testbed, "cilogon"), oidc=oidc_testbed)
    authorize = await hub.start(hub.browser(), "cilogon")
    assert "selected_idp=" in authorize
    assert (await hub.oidc_login(hub.browser(), "cilogon", "afadmin")).status_code == 302
    assert hub.groups_of("afadmin") == ["staff", "ucsd"]  # strip_domain ucsd.edu
    assert (await hub.auth_state("afadmin"))["vos"] == ["cms"]
    assert (await hub.oidc_login(hub.browser(), "cilogon", "duneuser")).status_code == 302
    assert hub.user("duneuser-fnal.gov") is not None  # eppn kept whole for FNAL
    refused = await hub.oidc_login(hub.browser(), "cilogon", "atlasuser")
    assert refused.status_code == 403
    assert "University of Chicago is not allowed on this hub" in refused.text
    with pytest.raises(KeyError):
        hub.user("atlasuser-uchicago.edu")


async def test_generic_oidc_with_email_usernames_needs_verified_email(
    auth_hub, oidc_testbed
) -> None:
    generic = idp_config(oidc_testbed, "cern", name="campus", type="oidc", username_claim="email")
    generic["display_name"] = "Campus SSO"
    hub: AuthHub = await auth_hub(af_config(oidc_testbed, idps=[generic]), oidc=oidc_testbed)
    assert (await hub.oidc_login(hub.browser(), "campus", "cmsuser")).status_code == 302
    assert hub.user("carla.mendes-cern.ch") is not None
    refused = await hub.oidc_login(hub.browser(), "campus", "unverified")
    assert refused.status_code == 403
    assert "has not verified your email address" in refused.text


async def test_unverified_email_is_not_stored(auth_hub, oidc_testbed) -> None:
    hub: AuthHub = await auth_hub(af_config(oidc_testbed, "cern"), oidc=oidc_testbed)
    assert (await hub.oidc_login(hub.browser(), "cern", "unverified")).status_code == 302
    assert (await hub.auth_state("unverified"))["email"] is None


# -- login page, next, logout --------------------------------------------------------------------


async def test_login_page_lists_every_visible_idp(auth_hub, oidc_testbed) -> None:
    config = af_config(oidc_testbed)
    config["idps"][2]["hidden"] = True
    hub: AuthHub = await auth_hub(config, oidc=oidc_testbed)
    page = await hub.login_page(hub.browser(), "/af/hub/token")
    assert page.status_code == 200
    assert "Sign in with CERN SSO" in page.text and "Sign in with INDIGO IAM" in page.text
    assert "CILogon" not in page.text
    assert 'href="/af/hub/login/cern?next=%2Faf%2Fhub%2Ftoken"' in page.text
    assert (await hub.oidc_login(hub.browser(), "cilogon", "cmsuser")).status_code == 302


async def test_next_is_kept_when_local(auth_hub, oidc_testbed) -> None:
    hub: AuthHub = await auth_hub(af_config(oidc_testbed, "iam"), oidc=oidc_testbed)
    response = await hub.oidc_login(
        hub.browser(), "iam", "cmsuser", next_url="/af/user/cmsuser/lab?reset"
    )
    assert response.headers["location"] == "/af/user/cmsuser/lab?reset"


@pytest.mark.parametrize(
    "evil",
    [
        "https://evil.example/phish",
        "//evil.example/phish",
        "/\\evil.example/phish",
        "///evil.example/",
        "javascript:alert(1)",
        "http:evil.example",
        "/af/hub/%0d%0aSet-Cookie:x=1",
    ],
)
async def test_open_redirect_in_next_is_refused(auth_hub, oidc_testbed, evil: str) -> None:
    hub: AuthHub = await auth_hub(af_config(oidc_testbed, "iam"), oidc=oidc_testbed)
    response = await hub.oidc_login(hub.browser(), "iam", "atlasuser", next_url=evil)
    assert response.status_code == 302
    location = response.headers["location"]
    assert urlsplit(location).netloc == "" and location.startswith("/af/")
    assert "evil" not in location


async def test_logout_ends_the_idp_session_when_configured(auth_hub, oidc_testbed) -> None:
    config = af_config(oidc_testbed, "cern")
    config["idps"][0]["end_session"] = True
    hub: AuthHub = await auth_hub(config, oidc=oidc_testbed)
    browser = hub.browser()
    assert (await hub.oidc_login(browser, "cern", "cmsuser")).status_code == 302
    response = await browser.get(hub.hub_url + "logout")
    assert response.status_code == 302
    location = response.headers["location"]
    assert location.startswith(oidc_testbed["cern"].issuer + "/protocol/openid-connect/logout?")
    assert "id_token_hint=" in location and "post_logout_redirect_uri=" in location
    home = await browser.get(hub.hub_url + "home")
    assert home.status_code == 302 and "/hub/login" in home.headers["location"]


# -- one person per name ---------------------------------------------------------------------


async def test_cross_idp_collision_is_refused(auth_hub, oidc_testbed) -> None:
    hub: AuthHub = await auth_hub(af_config(oidc_testbed, "cern", "iam"), oidc=oidc_testbed)
    assert (await hub.oidc_login(hub.browser(), "cern", "cmsuser")).status_code == 302
    refused = await hub.oidc_login(hub.browser(), "iam", "cmsuser")
    assert refused.status_code == 403
    assert "belongs to someone who signs in with CERN SSO" in refused.text
    assert (await hub.auth_state("cmsuser"))["idp"] == "cern"
    # the first owner is unaffected
    assert (await hub.oidc_login(hub.browser(), "cern", "cmsuser")).status_code == 302


async def test_binding_survives_a_hub_restart(auth_hub, oidc_testbed, tmp_path) -> None:
    db = str(tmp_path / "persistent-bindings.sqlite")
    from integration.authhub import stop_hub

    first: AuthHub = await auth_hub(
        af_config(oidc_testbed, "cern", "iam", binding_db=db), oidc=oidc_testbed
    )
    assert (await first.oidc_login(first.browser(), "iam", "atlasuser")).status_code == 302
    await stop_hub(first)
    first.browsers.clear()
    second: AuthHub = await auth_hub(
        af_config(oidc_testbed, "cern", "iam", binding_db=db), oidc=oidc_testbed
    )
    refused = await second.oidc_login(second.browser(), "cern", "atlasuser")
    assert refused.status_code == 403 and "belongs to someone" in refused.text


async def test_explicit_links_let_both_identities_in(auth_hub, oidc_testbed) -> None:
    sub = oidc_testbed["iam"].user("cmsuser").sub
    config = af_config(
        oidc_testbed, "cern", "iam", linked_identities={"carla": ["cern:cmsuser", f"iam:{sub}"]}
    )
    hub: AuthHub = await auth_hub(config, oidc=oidc_testbed)
    assert (await hub.oidc_login(hub.browser(), "cern", "cmsuser")).status_code == 302
    assert (await hub.auth_state("carla"))["idp"] == "cern"
    assert (await hub.oidc_login(hub.browser(), "iam", "cmsuser")).status_code == 302
    state = await hub.auth_state("carla")
    assert state["idp"] == "iam" and state["subject"] == sub
    assert hub.groups_of("carla") == ["cms"]
    with pytest.raises(KeyError):
        hub.user("cmsuser")


# -- refresh ---------------------------------------------------------------------------------


async def test_refresh_after_key_rotation_and_expiry(auth_hub, oidc_testbed) -> None:
    iam = oidc_testbed["iam"]
    person = oidc_testbed.set_user(
        "iam",
        "refresher",
        password="refresher-pw",
        claims={
            "preferred_username": "refresher",
            "wlcg.groups": ["/cms", "/cms/af-admins"],
            "email": "refresher@example.org",
            "email_verified": True,
        },
    )
    config = af_config(oidc_testbed, "iam")
    config["idps"][0]["jwks_refetch_interval"] = 0  # the IdP rotates right after our fetch
    hub: AuthHub = await auth_hub(config, oidc=oidc_testbed)
    old_ttl = dict(iam.ttl)
    oidc_testbed.set_ttl("iam", access_token=2)
    try:
        assert (await hub.oidc_login(hub.browser(), "iam", "refresher")).status_code == 302
    finally:
        oidc_testbed.set_ttl("iam", access_token=old_ttl["access_token"])
    before = await hub.auth_state("refresher")
    assert hub.roles_of("refresher") == ["user", "vo-manager-cms"]
    old_kid = jwt.get_unverified_header(before["id_token"])["kid"]
    new_kid = oidc_testbed.rotate_keys("iam")
    oidc_testbed.update_claims("iam", "refresher", **{"wlcg.groups": ["/atlas"]})
    await asyncio.sleep(max(0.0, before["expires_at"] + 1 - time.time()))  # really expired
    assert await userinfo_status(oidc_testbed, "iam", before["access_token"]) == 401

    user = hub.user("refresher")
    model = await hub.authenticator.refresh_user(user)
    assert isinstance(model, dict)
    state = model["auth_state"]
    assert state["access_token"] != before["access_token"]
    assert state["refresh_token"] != before["refresh_token"]  # rotated, and stored
    assert jwt.get_unverified_header(state["id_token"])["kid"] == new_kid != old_kid
    assert state["expires_at"] > time.time() + 600
    assert state["subject"] == person.sub
    assert await userinfo_status(oidc_testbed, "iam", state["access_token"]) == 200
    # groups, VOs and roles are re-evaluated from the new claims
    assert model["groups"] == ["atlas"] and state["vos"] == ["atlas"]
    assert [r["name"] for r in model["roles"]] == ["user"]


async def test_refresh_through_the_hub_updates_the_user(auth_hub, oidc_testbed) -> None:
    oidc_testbed.set_user(
        "iam",
        "regrouped",
        password="regrouped-pw",
        claims={"preferred_username": "regrouped", "wlcg.groups": ["/cms"]},
    )
    config = af_config(oidc_testbed, "iam", refresh_margin=10**6)  # always renew
    hub: AuthHub = await auth_hub(config, oidc=oidc_testbed, Authenticator={"auth_refresh_age": 1})
    browser = hub.browser()
    assert (await hub.oidc_login(browser, "iam", "regrouped")).status_code == 302
    first = await hub.auth_state("regrouped")
    oidc_testbed.update_claims("iam", "regrouped", **{"wlcg.groups": ["/dune"]})
    hub.user("regrouped")._auth_refreshed = 0  # stale: the next request refreshes
    assert (await browser.get(hub.hub_url + "home")).status_code == 200
    state = await hub.auth_state("regrouped")
    assert state["access_token"] != first["access_token"]
    assert hub.groups_of("regrouped") == ["dune"]


async def test_revoked_grant_forces_a_new_login(auth_hub, oidc_testbed) -> None:
    oidc_testbed.set_user(
        "iam", "suspended", password="suspended-pw", claims={"preferred_username": "suspended"}
    )
    config = af_config(oidc_testbed, "iam", refresh_margin=10**6)
    hub: AuthHub = await auth_hub(config, oidc=oidc_testbed)
    assert (await hub.oidc_login(hub.browser(), "iam", "suspended")).status_code == 302
    assert oidc_testbed.revoke_grants("iam", "suspended") >= 1
    assert await hub.authenticator.refresh_user(hub.user("suspended")) is False


async def test_fresh_tokens_need_no_idp_round_trip(auth_hub, oidc_testbed) -> None:
    hub: AuthHub = await auth_hub(af_config(oidc_testbed, "cern"), oidc=oidc_testbed)
    assert (await hub.oidc_login(hub.browser(), "cern", "atlasuser")).status_code == 302
    state = await hub.auth_state("atlasuser")
    model = await hub.authenticator.refresh_user(hub.user("atlasuser"))
    assert isinstance(model, dict)
    assert model["auth_state"]["access_token"] == state["access_token"]
    assert model["groups"] == ["atlas"]


async def test_concurrent_refreshes_use_the_rotating_refresh_token_once(
    auth_hub, oidc_testbed
) -> None:
    config = af_config(oidc_testbed, "iam", refresh_margin=10**6)  # always renew
    hub: AuthHub = await auth_hub(config, oidc=oidc_testbed)
    assert (await hub.oidc_login(hub.browser(), "iam", "atlasuser")).status_code == 302
    user = hub.user("atlasuser")
    results = await asyncio.gather(*(hub.authenticator.refresh_user(user) for _ in range(5)))
    assert all(isinstance(r, dict) for r in results)
    tokens = {r["auth_state"]["access_token"] for r in results}  # type: ignore[index]
    assert len(tokens) == 1  # one renewal at the IdP, shared by every caller
    assert await userinfo_status(oidc_testbed, "iam", tokens.pop()) == 200


async def test_idp_outage_postpones_the_refresh(auth_hub, oidc_testbed) -> None:
    config = af_config(oidc_testbed, "cern", refresh_margin=10**6)
    hub: AuthHub = await auth_hub(config, oidc=oidc_testbed)
    assert (await hub.oidc_login(hub.browser(), "cern", "duneuser")).status_code == 302
    idp = hub.authenticator.idp("cern")
    assert idp is not None
    idp._discovery = {**idp._discovery, "token_endpoint": "http://127.0.0.1:9/token"}  # type: ignore[attr-defined]
    assert (
        await hub.authenticator.refresh_user(hub.user("duneuser")) is True
    )  # kept, not logged out


async def test_discovery_is_cached_and_pkce_is_s256(auth_hub, oidc_testbed) -> None:
    hub: AuthHub = await auth_hub(af_config(oidc_testbed, "iam"), oidc=oidc_testbed)
    authorize = await hub.start(hub.browser(), "iam")
    query = {k: v[0] for k, v in parse_qs(urlsplit(authorize).query).items()}
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["nonce"] and query["state"] and query["state"] != query["nonce"]
    for name in ("cmsuser", "atlasuser", "duneuser"):
        assert (await hub.oidc_login(hub.browser(), "iam", name)).status_code == 302
    idp = hub.authenticator.idp("iam")
    assert idp.discovery_fetches == 1 and idp.jwks_fetches == 1  # type: ignore[union-attr]
