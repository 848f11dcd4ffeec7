"""Hostile inputs against the OIDC sign-in: each refused with a clear message, never a 500.

The flows run against the real oidc-provider issuers. Forged id_tokens are crafted here and
put into the token response the hub receives (the hub's token-validation path sees them
exactly as if the IdP had sent them); where an attack needs a token the hub would otherwise
trust (wrong iss/aud/exp), a locally generated key is added to the IdP's cached JWKS first.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from afauth.idps.oidc import OIDC
from integration.authhub import AuthHub, auth_hub
from integration.test_auth_oidc import af_config
from testbed.oidc.fixtures import oidc_testbed
from testbed.oidc.login import drive_login
from testbed.oidc.provider import OIDCTestbed

pytestmark = [pytest.mark.oidc, pytest.mark.hub]

__all__ = ["auth_hub", "oidc_testbed"]

Body = dict[str, Any]
LOCAL_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def local_jwk(kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(LOCAL_KEY.public_key()))
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


def claims_of(token: str) -> dict[str, Any]:
    data: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return data


def patch_token_response(
    monkeypatch: pytest.MonkeyPatch, idp: OIDC, change: Callable[[Body], Awaitable[Body]]
) -> None:
    """Replace the body of the authorization-code token response the hub receives."""
    original = idp._token_request

    async def wrapped(form: dict[str, str], what: str) -> tuple[int, Body]:
        status, body = await original(form, what)
        if status == 200 and form.get("grant_type") == "authorization_code":
            body = await change(dict(body))
        return status, body

    monkeypatch.setattr(idp, "_token_request", wrapped)


async def hostile_hub(auth_hub: Any, tb: OIDCTestbed, **over: Any) -> tuple[AuthHub, OIDC]:
    hub: AuthHub = await auth_hub(af_config(tb, "iam", **over), oidc=tb)
    idp = hub.authenticator.idp("iam")
    assert isinstance(idp, OIDC)
    return hub, idp


def refused(response: httpx.Response, status: int, text: str) -> None:
    assert response.status_code == status, (response.status_code, response.text[:3000])
    assert text in response.text, response.text[:3000]
    assert "jupyterhub-hub-login" not in response.cookies


async def forged_login(hub: AuthHub, username: str = "cmsuser") -> httpx.Response:
    return await hub.oidc_login(hub.browser(), "iam", username)


# -- forged id_tokens ----------------------------------------------------------------------------


async def test_alg_none_is_refused(auth_hub, oidc_testbed, monkeypatch) -> None:
    hub, idp = await hostile_hub(auth_hub, oidc_testbed)

    async def change(body: Body) -> Body:
        real = claims_of(body["id_token"])
        header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
        body["id_token"] = f"{header}.{b64(json.dumps({**real, 'sub': 'x'}).encode())}."
        return body

    patch_token_response(monkeypatch, idp, change)
    refused(await forged_login(hub), 403, "uses algorithm &#39;none&#39;, which is not allowed")


async def test_hs256_signed_with_the_idps_public_key_is_refused(
    auth_hub, oidc_testbed, monkeypatch
) -> None:
    hub, idp = await hostile_hub(auth_hub, oidc_testbed)

    async def change(body: Body) -> Body:
        jwk = (await idp.jwks())["keys"][0]
        pem = jwt.PyJWK(jwk).key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = b64(json.dumps({"alg": "HS256", "kid": jwk["kid"], "typ": "JWT"}).encode())
        payload = b64(json.dumps(claims_of(body["id_token"])).encode())
        sig = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        body["id_token"] = f"{header}.{payload}.{b64(sig)}"
        return body

    patch_token_response(monkeypatch, idp, change)
    refused(await forged_login(hub), 403, "HS256")
    assert "which is not allowed" in (await forged_login(hub)).text


async def test_tampered_signature_is_refused(auth_hub, oidc_testbed, monkeypatch) -> None:
    hub, idp = await hostile_hub(auth_hub, oidc_testbed)

    async def change(body: Body) -> Body:
        header, _, sig = body["id_token"].split(".")
        payload = {**claims_of(body["id_token"]), "preferred_username": "afadmin"}
        body["id_token"] = f"{header}.{b64(json.dumps(payload).encode())}.{sig}"
        return body

    patch_token_response(monkeypatch, idp, change)
    refused(await forged_login(hub), 403, "signature is invalid")
    with pytest.raises(KeyError):
        hub.user("afadmin")


async def test_unknown_kid_refetches_the_jwks_once_rate_limited(
    auth_hub, oidc_testbed, monkeypatch
) -> None:
    hub, idp = await hostile_hub(auth_hub, oidc_testbed)
    assert (await forged_login(hub, "atlasuser")).status_code == 302  # JWKS cached
    assert idp.jwks_fetches == 1

    async def change(body: Body) -> Body:
        forged = jwt.encode(
            claims_of(body["id_token"]), LOCAL_KEY, algorithm="RS256", headers={"kid": "forged-1"}
        )
        body["id_token"] = forged
        return body

    patch_token_response(monkeypatch, idp, change)
    idp._jwks_at -= 3600  # the cached key set is an hour old: a refetch is allowed
    refused(await forged_login(hub), 403, "signed with a key the IdP does not publish")
    assert idp.jwks_fetches == 2  # exactly one refetch for the unknown kid
    # within jwks_refetch_interval: no further refetch, and no claim that the IdP lacks the key
    refused(await forged_login(hub), 503, "the signing key is not known yet; retry in a minute")
    assert idp.jwks_fetches == 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"iss": "https://evil.example.org/iam"}, "issued by another issuer"),
        ({"aud": "another-client"}, "issued to another client"),
        ({"exp": 1_000_000_000}, "has expired"),
        ({"nbf": 4_000_000_000}, "not valid yet"),
        ({"nonce": "not-this-sign-in"}, "does not answer this sign-in"),
        ({"iat": 1_000_000_000, "exp": 4_000_000_000}, "issued too long ago"),
    ],
)
async def test_claim_checks_with_a_trusted_key(
    auth_hub, oidc_testbed, monkeypatch, change: dict[str, Any], message: str
) -> None:
    hub, idp = await hostile_hub(auth_hub, oidc_testbed)

    async def forge(body: Body) -> Body:
        keys = await idp.jwks()
        idp._jwks = {"keys": [*keys["keys"], local_jwk("trusted-local")]}  # as if the IdP had it
        payload = {**claims_of(body["id_token"]), **change}
        body["id_token"] = jwt.encode(
            payload, LOCAL_KEY, algorithm="RS256", headers={"kid": "trusted-local"}
        )
        return body

    patch_token_response(monkeypatch, idp, forge)
    refused(await forged_login(hub), 403, message)


async def test_the_trusted_key_itself_works(auth_hub, oidc_testbed, monkeypatch) -> None:
    """Control for the test above: the same forgery without a bad claim is accepted."""
    hub, idp = await hostile_hub(auth_hub, oidc_testbed)

    async def forge(body: Body) -> Body:
        keys = await idp.jwks()
        idp._jwks = {"keys": [*keys["keys"], local_jwk("trusted-local")]}
        body["id_token"] = jwt.encode(
            claims_of(body["id_token"]),
            LOCAL_KEY,
            algorithm="RS256",
            headers={"kid": "trusted-local"},
        )
        return body

    patch_token_response(monkeypatch, idp, forge)
    assert (await forged_login(hub)).status_code == 302


async def test_real_id_token_for_another_client_is_refused(
    auth_hub, oidc_testbed, monkeypatch
) -> None:
    hub, idp = await hostile_hub(auth_hub, oidc_testbed)
    other = oidc_testbed.add_client(
        "iam",
        "other-rp",
        redirect_uris=[hub.callback_uri("iam")],
        client_secret="other-rp-secret",
    )
    original = idp._token_request

    async def as_other_client(form: dict[str, str], what: str) -> tuple[int, Body]:
        if form.get("grant_type") != "authorization_code":
            return await original(form, what)
        doc = await idp.discovery()
        async with httpx.AsyncClient(trust_env=False) as http:
            r = await http.post(
                doc["token_endpoint"], data=form, auth=(other.client_id, "other-rp-secret")
            )
        return r.status_code, r.json()

    monkeypatch.setattr(idp, "_token_request", as_other_client)
    browser = hub.browser()
    authorize = await hub.start(browser, "iam")
    parts = urlsplit(authorize)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | {"client_id": "other-rp"}
    callback = await drive_login(
        browser, urlunsplit(parts._replace(query=urlencode(query))), "cmsuser", "cmsuser-pw"
    )
    refused(await browser.get(callback), 403, "issued to another client")


async def test_real_expired_id_token_is_refused(auth_hub, oidc_testbed, monkeypatch) -> None:
    config = af_config(oidc_testbed, "iam")
    config["idps"][0]["leeway"] = 0
    hub: AuthHub = await auth_hub(config, oidc=oidc_testbed)
    idp = hub.authenticator.idp("iam")
    assert isinstance(idp, OIDC)

    async def slow_network(body: Body) -> Body:
        await asyncio.sleep(max(0.0, claims_of(body["id_token"])["exp"] + 1.5 - time.time()))
        return body

    patch_token_response(monkeypatch, idp, slow_network)
    ttl = dict(oidc_testbed["iam"].ttl)
    oidc_testbed.set_ttl("iam", id_token=1)
    try:
        refused(await forged_login(hub), 403, "has expired")
    finally:
        oidc_testbed.set_ttl("iam", id_token=ttl["id_token"])


# -- state, nonce, callback parameters -------------------------------------------------------


async def test_bad_nonce_from_the_real_idp_is_refused(auth_hub, oidc_testbed) -> None:
    hub, _ = await hostile_hub(auth_hub, oidc_testbed)
    browser = hub.browser()
    parts = urlsplit(await hub.start(browser, "iam"))
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | {"nonce": "attacker-nonce"}
    callback = await drive_login(
        browser, urlunsplit(parts._replace(query=urlencode(query))), "cmsuser", "cmsuser-pw"
    )
    refused(await browser.get(callback), 403, "does not answer this sign-in (nonce)")


async def test_callback_without_a_started_sign_in_is_refused(auth_hub, oidc_testbed) -> None:
    hub, _ = await hostile_hub(auth_hub, oidc_testbed)
    victim = hub.browser()
    callback = await hub.authorize(victim, await hub.start(victim, "iam"), "cmsuser", "cmsuser-pw")
    attacker = hub.browser()  # login CSRF: the victim's code in another browser
    refused(await attacker.get(callback), 400, "no sign-in was started in this browser")
    bare = await attacker.get(hub.callback_uri("iam"))
    refused(bare, 400, "no sign-in was started")


async def test_replayed_callback_is_refused(auth_hub, oidc_testbed) -> None:
    hub, _ = await hostile_hub(auth_hub, oidc_testbed)
    browser = hub.browser()
    authorize = await hub.start(browser, "iam")
    cookie = dict(browser.cookies)["afauth-oidc-iam"]
    callback = await hub.authorize(browser, authorize, "cmsuser", "cmsuser-pw")
    assert (await browser.get(callback)).status_code == 302
    refused(await browser.get(callback), 400, "no sign-in was started")  # cookie was consumed
    replay = hub.browser()
    replay.cookies.set("afauth-oidc-iam", cookie, path="/af/hub/login/iam")
    refused(await replay.get(callback), 400, "this sign-in has already been completed")


async def test_state_from_another_tab_is_refused(auth_hub, oidc_testbed) -> None:
    hub, _ = await hostile_hub(auth_hub, oidc_testbed)
    browser = hub.browser()
    first = await hub.start(browser, "iam")
    await hub.start(browser, "iam")  # a second tab overwrites the state cookie
    callback = await hub.authorize(browser, first, "cmsuser", "cmsuser-pw")
    refused(await browser.get(callback), 400, "started in another tab or window")


async def test_missing_or_tampered_state_parameter(auth_hub, oidc_testbed) -> None:
    hub, _ = await hostile_hub(auth_hub, oidc_testbed)
    browser = hub.browser()
    callback = await hub.authorize(
        browser, await hub.start(browser, "iam"), "cmsuser", "cmsuser-pw"
    )
    parts = urlsplit(callback)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    no_state = urlunsplit(parts._replace(query=urlencode({"code": query["code"]})))
    refused(await browser.get(no_state), 400, "returned no state")


async def test_forged_state_cookie_is_ignored(auth_hub, oidc_testbed) -> None:
    hub, _ = await hostile_hub(auth_hub, oidc_testbed)
    browser = hub.browser()
    callback = await hub.authorize(
        browser, await hub.start(browser, "iam"), "cmsuser", "cmsuser-pw"
    )
    state = parse_qs(urlsplit(callback).query)["state"][0]
    forged = json.dumps({"i": "iam", "s": state, "n": "n", "v": "v", "x": "/", "t": time.time()})
    browser.cookies.set("afauth-oidc-iam", forged, path="/af/hub/login/iam")  # unsigned
    refused(await browser.get(callback), 400, "no sign-in was started")


async def test_idp_error_and_mixed_up_issuer(auth_hub, oidc_testbed) -> None:
    hub, _ = await hostile_hub(auth_hub, oidc_testbed)
    browser = hub.browser()
    state = parse_qs(urlsplit(await hub.start(browser, "iam")).query)["state"][0]
    denied = await browser.get(
        hub.callback_uri("iam"), params={"state": state, "error": "access_denied"}
    )
    refused(denied, 403, "did not sign you in (access_denied)")
    callback = await hub.authorize(
        browser, await hub.start(browser, "iam"), "cmsuser", "cmsuser-pw"
    )
    mixed = callback.replace("iss=", "iss=https%3A%2F%2Fevil.example&was=")
    refused(await browser.get(mixed), 400, "came from another issuer")


async def test_unknown_idp_and_wrong_methods(auth_hub, oidc_testbed) -> None:
    hub, _ = await hostile_hub(auth_hub, oidc_testbed)
    browser = hub.browser()
    refused(await browser.get(hub.hub_url + "login/okta"), 404, "no identity provider called")
    refused(await browser.get(hub.hub_url + "login/okta/callback"), 404, "no identity provider")
    page = await hub.login_page(browser)
    xsrf = page.cookies.get("_xsrf") or browser.cookies.get("_xsrf")
    post = await browser.post(hub.hub_url + "login/iam", data={"_xsrf": xsrf, "username": "x"})
    assert post.status_code in (403, 405)
    assert post.status_code != 500


async def test_oversized_and_unicode_names_from_the_idp(auth_hub, oidc_testbed) -> None:
    oidc_testbed.set_user(
        "iam",
        "wide",
        password="wide-pw",
        claims={"preferred_username": "\uff41\uff44\uff4d\uff49\uff4e"},
    )
    oidc_testbed.set_user(
        "iam", "long", password="long-pw", claims={"preferred_username": "x" * 300}
    )
    oidc_testbed.set_user(
        "iam", "rtl", password="rtl-pw", claims={"preferred_username": "adm\u202ein"}
    )
    hub, _ = await hostile_hub(auth_hub, oidc_testbed)
    refused(await hub.oidc_login(hub.browser(), "iam", "wide"), 403, "non-ASCII characters")
    refused(await hub.oidc_login(hub.browser(), "iam", "long"), 403, "too long")
    refused(await hub.oidc_login(hub.browser(), "iam", "rtl"), 403, "non-ASCII characters")
    assert {u.name for u in hub.app.users.values()} <= {"user"}  # MockHub's own user at most


async def test_a_code_posted_to_the_login_form_is_refused(auth_hub, oidc_testbed) -> None:
    """Only the callback (after its state check) may finish an OIDC flow."""
    hub, _ = await hostile_hub(auth_hub, oidc_testbed)
    browser = hub.browser()
    authorize = await hub.start(browser, "iam")
    query = {k: v[0] for k, v in parse_qs(urlsplit(authorize).query).items()}
    callback = await hub.authorize(browser, authorize, "cmsuser", "cmsuser-pw")
    code = parse_qs(urlsplit(callback).query)["code"][0]
    await hub.login_page(browser)
    form = {
        "_xsrf": browser.cookies["_xsrf"],
        "idp": "iam",
        "code": code,
        "code_verifier": "chosen-by-the-attacker-" + "x" * 30,
        "nonce": query["nonce"],
        "redirect_uri": hub.callback_uri("iam"),
    }
    response = await browser.post(hub.hub_url + "login", data=form)
    assert response.status_code == 400 and "using its button" in response.text
    with pytest.raises(KeyError):
        hub.user("cmsuser")
