"""oauthenticator's GenericOAuthenticator as one IdP among several, through a real hub.

The wrapped class signs people in at the node oidc-provider's CERN-like issuer (plain OAuth 2:
authorize, token and userinfo endpoints) next to a native OIDC IdP (the IAM-like issuer) on the
same login page; bindings keep one person per name across them and mapping rules apply.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from integration.authhub import AuthHub, auth_hub
from testbed.oidc.fixtures import oidc_testbed
from testbed.oidc.provider import OIDCTestbed

pytestmark = [pytest.mark.oidc, pytest.mark.hub]

__all__ = ["auth_hub", "oidc_testbed"]


def partner(tb: OIDCTestbed, **options: Any) -> dict[str, Any]:
    """The CERN-like issuer seen through GenericOAuthenticator (endpoints from discovery)."""
    info = tb["cern"]
    doc = httpx.get(info.discovery_url, trust_env=False).json()
    return {
        "name": "partner",
        "type": "oauthenticator",
        "class": "generic",
        "display_name": "Partner lab",
        "require_groups": ["default-role"],
        "options": {
            "client_id": info.client_id,
            "client_secret": info.client_secret,
            "basic_auth": True,
            "authorize_url": doc["authorization_endpoint"],
            "token_url": doc["token_endpoint"],
            "userdata_url": doc["userinfo_endpoint"],
            "scope": ["openid", "profile", "email"],
            "username_claim": "preferred_username",
            "auth_state_groups_key": "oauth_user.cern_roles",
            **options,
        },
    }


def iam(tb: OIDCTestbed) -> dict[str, Any]:
    info = tb["iam"]
    return {
        "name": "iam",
        "type": "iam",
        "issuer": info.issuer,
        "client_id": info.client_id,
        "client_secret": info.client_secret,
        "scope": ["openid", "profile", "email", "wlcg.groups"],
        "username_claim": "preferred_username",
    }


MAPPING = [
    {"idp": "partner", "claim": "groups", "match": "(?P<vo>cms|atlas)-users", "vo": "{vo}"},
    {"idp": "partner", "claim": "groups", "match": "(?P<vo>cms|atlas)-users", "group": "{vo}"},
    {"idp": "partner", "claim": "groups", "value": "admin", "admin": True},
    {"idp": "iam", "claim": "wlcg.groups", "match": "/(?P<vo>cms|atlas)", "vo": "{vo}"},
]


async def start(auth_hub: Any, tb: OIDCTestbed, **over: Any) -> AuthHub:
    config = {
        "idps": [iam(tb), partner(tb)],
        "mapping": MAPPING,
        "vos": ["cms", "atlas"],
        "allow_all": True,
        **over,
    }
    hub: AuthHub = await auth_hub(config, oidc=tb)
    tb.add_redirect_uris(hub.callback_uri("partner"), issuer="cern")
    return hub


async def test_generic_oauthenticator_login_next_to_oidc(auth_hub, oidc_testbed) -> None:
    hub = await start(auth_hub, oidc_testbed)
    page = await hub.login_page(hub.browser())
    assert "Sign in with Partner lab" in page.text and "Sign in with INDIGO IAM" in page.text
    browser = hub.browser()
    response = await hub.oidc_login(browser, "partner", "afadmin", next_url="/af/hub/token")
    assert response.status_code == 302, response.text[:2000]
    assert response.headers["location"] == "/af/hub/token"
    user = hub.user("afadmin")
    assert user.admin is True  # mapping rule on the wrapped class's groups
    assert hub.groups_of("afadmin") == ["cms"]
    state = await hub.auth_state("afadmin")
    assert state["idp"] == "partner" and state["subject"] == "afadmin"  # the provider's sub
    assert state["vos"] == ["cms"]
    assert state["idp_groups"] == ["admin", "cms-users", "default-role"]
    assert state["access_token"] and state["refresh_token"]
    assert state["email"] == "ada.fermi@cern.ch"  # email_verified in the user info
    # the IAM user of the same login name is another person: refused by the binding
    refused = await hub.oidc_login(hub.browser(), "iam", "afadmin")
    assert refused.status_code == 403
    assert "belongs to someone who signs in with Partner lab" in refused.text
    assert (await hub.auth_state("afadmin"))["idp"] == "partner"


async def test_name_taken_through_oidc_is_refused_to_the_wrapped_idp(
    auth_hub, oidc_testbed
) -> None:
    hub = await start(auth_hub, oidc_testbed)
    assert (await hub.oidc_login(hub.browser(), "iam", "atlasuser")).status_code == 302
    assert hub.groups_of("atlasuser") == []
    refused = await hub.oidc_login(hub.browser(), "partner", "atlasuser")
    assert refused.status_code == 403
    assert "belongs to someone who signs in with INDIGO IAM" in refused.text
    assert (await hub.auth_state("atlasuser"))["idp"] == "iam"


async def test_the_wrapped_gate_and_require_groups(auth_hub, oidc_testbed) -> None:
    hub = await start(
        auth_hub,
        oidc_testbed,
        idps=[iam(oidc_testbed), partner(oidc_testbed, allowed_groups=["atlas-users"])],
    )
    refused = await hub.oidc_login(hub.browser(), "partner", "cmsuser")
    assert refused.status_code == 403 and "not allowed on this hub" in refused.text
    with pytest.raises(KeyError):
        hub.user("cmsuser")
    assert (await hub.oidc_login(hub.browser(), "partner", "atlasuser")).status_code == 302
    assert hub.groups_of("atlasuser") == ["atlas"]


async def test_refresh_renews_and_remaps(auth_hub, oidc_testbed) -> None:
    oidc_testbed.set_user(
        "cern",
        "wrapped",
        password="wrapped-pw",
        claims={
            "preferred_username": "wrapped",
            "cern_roles": ["default-role", "cms-users"],
            "email": "wrapped@cern.ch",
            "email_verified": True,
        },
    )
    hub = await start(auth_hub, oidc_testbed, refresh_margin=10**6)  # always renew
    assert (await hub.oidc_login(hub.browser(), "partner", "wrapped")).status_code == 302
    before = await hub.auth_state("wrapped")
    oidc_testbed.update_claims("cern", "wrapped", cern_roles=["default-role", "atlas-users"])
    model = await hub.authenticator.refresh_user(hub.user("wrapped"))
    assert isinstance(model, dict)
    state = model["auth_state"]
    assert state["access_token"] != before["access_token"]  # the refresh-token grant
    assert model["groups"] == ["atlas"] and state["vos"] == ["atlas"]


async def test_revoked_grant_sends_the_person_to_sign_in_again(auth_hub, oidc_testbed) -> None:
    hub = await start(auth_hub, oidc_testbed, refresh_margin=10**6)
    assert (await hub.oidc_login(hub.browser(), "partner", "duneuser")).status_code == 302
    assert oidc_testbed.revoke_grants("cern", "duneuser") >= 1
    assert await hub.authenticator.refresh_user(hub.user("duneuser")) is False


async def test_without_renewal_the_wrapped_refresh_user_rereads_the_user(
    auth_hub, oidc_testbed
) -> None:
    oidc_testbed.set_user(
        "cern",
        "rereader",
        password="rereader-pw",
        claims={"preferred_username": "rereader", "cern_roles": ["default-role", "cms-users"]},
    )
    hub = await start(auth_hub, oidc_testbed)  # tokens far from expiry: no refresh grant
    assert (await hub.oidc_login(hub.browser(), "partner", "rereader")).status_code == 302
    before = await hub.auth_state("rereader")
    oidc_testbed.update_claims("cern", "rereader", cern_roles=["cms-users"])
    refused = await hub.authenticator.refresh_user(hub.user("rereader"))
    assert refused is False  # no longer in require_groups: the user info was read again
    oidc_testbed.update_claims("cern", "rereader", cern_roles=["default-role", "atlas-users"])
    model = await hub.authenticator.refresh_user(hub.user("rereader"))
    assert isinstance(model, dict)
    assert model["auth_state"]["access_token"] == before["access_token"]  # same token
    assert model["groups"] == ["atlas"]
