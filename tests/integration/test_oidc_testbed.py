"""Smoke tests of the OIDC test bed: real node oidc-provider issuers, scripted browser login."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import jwt
import pytest

from testbed.oidc.fixtures import oidc_testbed
from testbed.oidc.login import LoginError, drive_login
from testbed.oidc.model import DEFAULT_REDIRECT_URI, ISSUER_NAMES, IssuerInfo
from testbed.oidc.provider import OIDCTestbed

pytestmark = pytest.mark.oidc

__all__ = ["oidc_testbed"]  # the fixture, re-exported so pytest finds it without a conftest

# Claims each profile must put in the id_token (with the recommended scopes).
PROFILE_CLAIMS = {
    "cern": {
        "cern_upn",
        "cern_person_id",
        "cern_roles",
        "resource_access",
        "email",
        "email_verified",
        "name",
        "preferred_username",
    },
    "iam": {
        "wlcg.groups",
        "wlcg.ver",
        "groups",
        "eduperson_entitlement",
        "email",
        "email_verified",
        "preferred_username",
    },
    "cilogon": {"idp", "idp_name", "eppn", "eptid", "affiliation", "email", "email_verified"},
}


@dataclass
class Tokens:
    access_token: str
    id_token: str
    refresh_token: str
    expires_in: int
    nonce: str
    raw: dict[str, Any]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A fresh 'browser' (own cookie jar) per test."""
    async with httpx.AsyncClient(timeout=30.0, trust_env=False) as client:
        yield client


async def discover(http: httpx.AsyncClient, info: IssuerInfo) -> dict[str, Any]:
    response = await http.get(info.discovery_url)
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


async def fetch_jwks(http: httpx.AsyncClient, info: IssuerInfo) -> dict[str, Any]:
    response = await http.get((await discover(http, info))["jwks_uri"])
    response.raise_for_status()
    jwks: dict[str, Any] = response.json()
    return jwks


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def authorize_url(
    discovery: dict[str, Any],
    info: IssuerInfo,
    *,
    state: str,
    nonce: str,
    challenge: str | None,
    scope: str | None = None,
    redirect_uri: str = DEFAULT_REDIRECT_URI,
) -> str:
    params = {
        "response_type": "code",
        "client_id": info.client_id,
        "redirect_uri": redirect_uri,
        "scope": scope or info.scope,
        "state": state,
        "nonce": nonce,
    }
    if challenge is not None:
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    return f"{discovery['authorization_endpoint']}?{urlencode(params)}"


def verify_id_token(
    token: str, jwks: dict[str, Any], info: IssuerInfo, *, nonce: str | None = None
) -> dict[str, Any]:
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWKSet.from_dict(jwks)[kid]
    claims: dict[str, Any] = jwt.decode(
        token,
        key=key.key,
        algorithms=["RS256"],
        audience=info.client_id,
        issuer=info.issuer,
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        leeway=5,
    )
    if nonce is not None:
        assert claims["nonce"] == nonce
    return claims


async def token_request(
    http: httpx.AsyncClient, info: IssuerInfo, data: dict[str, str]
) -> httpx.Response:
    discovery = await discover(http, info)
    return await http.post(
        discovery["token_endpoint"], data=data, auth=(info.client_id, info.client_secret)
    )


async def login(
    http: httpx.AsyncClient, info: IssuerInfo, username: str, *, scope: str | None = None
) -> Tokens:
    discovery = await discover(http, info)
    verifier, challenge = pkce_pair()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    url = authorize_url(discovery, info, state=state, nonce=nonce, challenge=challenge, scope=scope)
    user = info.user(username)
    location = await drive_login(http, url, user.username, user.password)

    assert location.startswith(DEFAULT_REDIRECT_URI + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == [state]
    assert query["iss"] == [info.issuer]
    response = await token_request(
        http,
        info,
        {
            "grant_type": "authorization_code",
            "code": query["code"][0],
            "redirect_uri": DEFAULT_REDIRECT_URI,
            "code_verifier": verifier,
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"].lower() == "bearer"
    return Tokens(
        body["access_token"],
        body["id_token"],
        body["refresh_token"],
        body["expires_in"],
        nonce,
        body,
    )


async def refresh(http: httpx.AsyncClient, info: IssuerInfo, refresh_token: str) -> httpx.Response:
    return await token_request(
        http, info, {"grant_type": "refresh_token", "refresh_token": refresh_token}
    )


async def userinfo(http: httpx.AsyncClient, info: IssuerInfo, access_token: str) -> httpx.Response:
    discovery = await discover(http, info)
    return await http.get(
        discovery["userinfo_endpoint"], headers={"Authorization": f"Bearer {access_token}"}
    )


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ISSUER_NAMES)
async def test_discovery(oidc_testbed: OIDCTestbed, http: httpx.AsyncClient, name: str) -> None:
    info = oidc_testbed[name]
    document = await discover(http, info)

    assert document["issuer"] == info.issuer
    assert info.discovery_url == f"{info.issuer}/.well-known/openid-configuration"
    assert urlsplit(info.issuer).hostname == "127.0.0.1"
    expected_path = {"cern": "/auth/realms/cern", "iam": "/iam", "cilogon": "/cilogon"}[name]
    assert urlsplit(info.issuer).path == expected_path
    for endpoint in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri"):
        assert document[endpoint].startswith(info.issuer + "/"), endpoint
    assert "S256" in document["code_challenge_methods_supported"]
    assert {"authorization_code", "refresh_token"} <= set(document["grant_types_supported"])
    assert set(info.scope.split()) <= set(document["scopes_supported"])
    assert PROFILE_CLAIMS[name] <= set(document["claims_supported"])
    jwks = await fetch_jwks(http, info)
    assert [k["kid"] for k in jwks["keys"]] == oidc_testbed.current_kids(name)
    assert all(k["kty"] == "RSA" and "d" not in k for k in jwks["keys"])


async def test_cern_uses_keycloak_layout(
    oidc_testbed: OIDCTestbed, http: httpx.AsyncClient
) -> None:
    document = await discover(http, oidc_testbed["cern"])
    issuer = oidc_testbed["cern"].issuer
    assert document["token_endpoint"] == f"{issuer}/protocol/openid-connect/token"
    assert document["jwks_uri"] == f"{issuer}/protocol/openid-connect/certs"


@pytest.mark.parametrize(
    ("name", "username"),
    [
        ("cern", "cmsuser"),
        ("cern", "afadmin"),
        ("iam", "cmsuser"),
        ("iam", "multiuser"),
        ("cilogon", "cmsuser"),
        ("cilogon", "duneuser"),
    ],
)
async def test_code_flow_with_pkce_and_claims(
    oidc_testbed: OIDCTestbed, http: httpx.AsyncClient, name: str, username: str
) -> None:
    info = oidc_testbed[name]
    user = info.user(username)
    tokens = await login(http, info, username)

    claims = verify_id_token(
        tokens.id_token, await fetch_jwks(http, info), info, nonce=tokens.nonce
    )
    assert claims["sub"] == user.sub
    assert PROFILE_CLAIMS[name] <= claims.keys()
    for key, value in user.claims.items():
        assert claims[key] == value, key

    response = await userinfo(http, info, tokens.access_token)
    assert response.status_code == 200, response.text
    assert response.json() == {"sub": user.sub, **user.claims}


async def test_profile_specific_values(oidc_testbed: OIDCTestbed, http: httpx.AsyncClient) -> None:
    cern = verify_id_token(
        (await login(http, oidc_testbed["cern"], "afadmin")).id_token,
        await fetch_jwks(http, oidc_testbed["cern"]),
        oidc_testbed["cern"],
    )
    assert cern["cern_upn"] == "afadmin"
    assert "admin" in cern["cern_roles"]
    assert "admin" in cern["resource_access"]["af-hub"]["roles"]

    async with httpx.AsyncClient(trust_env=False) as browser:
        iam = verify_id_token(
            (await login(browser, oidc_testbed["iam"], "cmsuser")).id_token,
            await fetch_jwks(browser, oidc_testbed["iam"]),
            oidc_testbed["iam"],
        )
    assert iam["wlcg.groups"] == ["/cms", "/cms/uscms"]
    assert iam["wlcg.ver"] == "1.0"
    assert "urn:mace:egi.eu:group:cms:uscms:role=member#aai.egi.eu" in iam["eduperson_entitlement"]

    async with httpx.AsyncClient(trust_env=False) as browser:
        unverified = verify_id_token(
            (await login(browser, oidc_testbed["cilogon"], "unverified")).id_token,
            await fetch_jwks(browser, oidc_testbed["cilogon"]),
            oidc_testbed["cilogon"],
        )
    assert unverified["email_verified"] is False
    assert unverified["idp"] == "https://idp.ucsd.edu/idp/shibboleth"


async def test_claims_follow_requested_scopes(
    oidc_testbed: OIDCTestbed, http: httpx.AsyncClient
) -> None:
    info = oidc_testbed["iam"]
    tokens = await login(http, info, "cmsuser", scope="openid")
    claims = verify_id_token(tokens.id_token, await fetch_jwks(http, info), info)
    assert "wlcg.groups" not in claims
    assert "email" not in claims
    assert claims["wlcg.ver"] == "1.0"


@pytest.mark.parametrize("name", ISSUER_NAMES)
async def test_wrong_password_yields_no_code(
    oidc_testbed: OIDCTestbed, http: httpx.AsyncClient, name: str
) -> None:
    info = oidc_testbed[name]
    discovery = await discover(http, info)
    _, challenge = pkce_pair()
    url = authorize_url(discovery, info, state="s", nonce="n", challenge=challenge)
    with pytest.raises(LoginError, match="Invalid username or password") as caught:
        await drive_login(http, url, "cmsuser", "not-the-password")
    assert caught.value.status_code == 401
    with pytest.raises(LoginError, match="Invalid username or password"):
        await drive_login(http, url, "nobody", "cmsuser-pw")


async def test_sessions_do_not_leak_between_issuers(
    oidc_testbed: OIDCTestbed, http: httpx.AsyncClient
) -> None:
    await login(http, oidc_testbed["cern"], "cmsuser")
    # Same browser: CERN SSO session is reused at CERN (no password needed) ...
    cern = oidc_testbed["cern"]
    url = authorize_url(
        await discover(http, cern), cern, state="s", nonce="n", challenge=pkce_pair()[1]
    )
    assert "code=" in await drive_login(http, url, "cmsuser", "wrong")
    # ... but IAM must ask for credentials again.
    iam = oidc_testbed["iam"]
    url = authorize_url(
        await discover(http, iam), iam, state="s", nonce="n", challenge=pkce_pair()[1]
    )
    with pytest.raises(LoginError):
        await drive_login(http, url, "cmsuser", "wrong")
    # Signing in at IAM does not end the CERN session (cookies are per issuer).
    await login(http, iam, "cmsuser")
    url = authorize_url(
        await discover(http, cern), cern, state="s", nonce="n", challenge=pkce_pair()[1]
    )
    assert "code=" in await drive_login(http, url, "cmsuser", "wrong")


async def test_pkce_is_enforced(oidc_testbed: OIDCTestbed, http: httpx.AsyncClient) -> None:
    info = oidc_testbed["cern"]
    discovery = await discover(http, info)
    user = info.user("cmsuser")
    without = authorize_url(discovery, info, state="s", nonce="n", challenge=None)
    location = await drive_login(http, without, user.username, user.password)
    assert "code=" not in location
    assert parse_qs(urlsplit(location).query)["error"] == ["invalid_request"]

    verifier, challenge = pkce_pair()
    url = authorize_url(discovery, info, state="s", nonce="n", challenge=challenge)
    code = parse_qs(urlsplit(await drive_login(http, url, user.username, user.password)).query)
    response = await token_request(
        http,
        info,
        {
            "grant_type": "authorization_code",
            "code": code["code"][0],
            "redirect_uri": DEFAULT_REDIRECT_URI,
            "code_verifier": pkce_pair()[0],  # not the one for this challenge
        },
    )
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"
    assert verifier


async def test_unregistered_redirect_uri_then_added(
    oidc_testbed: OIDCTestbed, http: httpx.AsyncClient
) -> None:
    info = oidc_testbed["cilogon"]
    discovery = await discover(http, info)
    redirect_uri = "http://127.0.0.1:1/hub/login/cilogon/callback"
    user = info.user("cmsuser")
    url = authorize_url(
        discovery, info, state="s", nonce="n", challenge=pkce_pair()[1], redirect_uri=redirect_uri
    )
    with pytest.raises(LoginError, match="redirect_uri"):
        await drive_login(http, url, user.username, user.password)

    oidc_testbed.add_redirect_uris(redirect_uri, issuer="cilogon")
    location = await drive_login(http, url, user.username, user.password)
    assert location.startswith(redirect_uri + "?")
    assert "code" in parse_qs(urlsplit(location).query)


async def test_refresh_token_grant(oidc_testbed: OIDCTestbed, http: httpx.AsyncClient) -> None:
    info = oidc_testbed["iam"]
    tokens = await login(http, info, "cmsuser")

    response = await refresh(http, info, tokens.refresh_token)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["access_token"] != tokens.access_token
    assert (await userinfo(http, info, body["access_token"])).status_code == 200
    claims = verify_id_token(body["id_token"], await fetch_jwks(http, info), info)
    assert claims["sub"] == info.user("cmsuser").sub
    assert claims["wlcg.groups"] == ["/cms", "/cms/uscms"]
    # Refresh tokens rotate: the new one works, the used one is spent.
    assert body["refresh_token"] != tokens.refresh_token
    assert (await refresh(http, info, body["refresh_token"])).status_code == 200


async def test_claim_changes_show_on_refresh(
    oidc_testbed: OIDCTestbed, http: httpx.AsyncClient
) -> None:
    info = oidc_testbed["iam"]
    oidc_testbed.set_user(
        "iam",
        "mover",
        password="mover-pw",
        claims={"preferred_username": "mover", "wlcg.groups": ["/cms"], "wlcg.ver": "1.0"},
    )
    tokens = await login(http, info, "mover")
    oidc_testbed.update_claims("iam", "mover", **{"wlcg.groups": ["/atlas"]})
    body = (await refresh(http, info, tokens.refresh_token)).json()
    claims = verify_id_token(body["id_token"], await fetch_jwks(http, info), info)
    assert claims["wlcg.groups"] == ["/atlas"]


async def test_short_access_token_ttl(oidc_testbed: OIDCTestbed, http: httpx.AsyncClient) -> None:
    info = oidc_testbed["cilogon"]
    oidc_testbed.set_ttl("cilogon", access_token=2)
    try:
        tokens = await login(http, info, "cmsuser")
        assert tokens.expires_in <= 2
        assert (await userinfo(http, info, tokens.access_token)).status_code == 200
        await asyncio.sleep(3.2)
        assert (await userinfo(http, info, tokens.access_token)).status_code == 401
        body = (await refresh(http, info, tokens.refresh_token)).json()
        assert (await userinfo(http, info, body["access_token"])).status_code == 200
    finally:
        oidc_testbed.set_ttl("cilogon", access_token=3600)


async def test_rotate_keys(oidc_testbed: OIDCTestbed, http: httpx.AsyncClient) -> None:
    info = oidc_testbed["cern"]
    tokens = await login(http, info, "cmsuser")
    old_jwks = await fetch_jwks(http, info)
    old_kid = jwt.get_unverified_header(tokens.id_token)["kid"]
    assert old_kid in {k["kid"] for k in old_jwks["keys"]}

    new_kid = oidc_testbed.rotate_keys("cern")

    new_jwks = await fetch_jwks(http, info)
    assert {k["kid"] for k in new_jwks["keys"]} == {new_kid}
    assert new_kid != old_kid
    # The grant survives the rotation: refresh works and is signed with the new key.
    response = await refresh(http, info, tokens.refresh_token)
    assert response.status_code == 200, response.text
    id_token = response.json()["id_token"]
    assert jwt.get_unverified_header(id_token)["kid"] == new_kid
    assert verify_id_token(id_token, new_jwks, info)["sub"] == "cmsuser"
    with pytest.raises(KeyError):
        verify_id_token(id_token, old_jwks, info)
    # The SSO session survives too.
    url = authorize_url(
        await discover(http, info), info, state="s", nonce="n", challenge=pkce_pair()[1]
    )
    assert "code=" in await drive_login(http, url, "cmsuser", "unused")


async def test_revoked_grant_cannot_refresh(
    oidc_testbed: OIDCTestbed, http: httpx.AsyncClient
) -> None:
    info = oidc_testbed["cern"]
    oidc_testbed.set_user(
        "cern", "leaver", password="leaver-pw", sub="leaver", claims={"cern_upn": "leaver"}
    )
    tokens = await login(http, info, "leaver")
    assert oidc_testbed.revoke_grants("cern", "leaver") == 1
    response = await refresh(http, info, tokens.refresh_token)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_control_health_and_missing_issuer(oidc_testbed: OIDCTestbed) -> None:
    assert oidc_testbed.health()
    assert oidc_testbed.running
    with pytest.raises(KeyError):
        oidc_testbed.rotate_keys("nope")
