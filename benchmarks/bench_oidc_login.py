"""Relying-party cost of an OIDC login: afauth's OIDC IdP vs oauthenticator's GenericOAuthenticator.

Both sign in real users of the IAM-like issuer of the node ``oidc-provider`` test bed
(tests/testbed/oidc/) on loopback. Each login walks the provider's real login page with
``drive_login`` (authorization code + PKCE S256; not timed), then times only the relying
party's part, on one asyncio loop:

* ours: ``OIDC.complete`` - token exchange, id_token verification against the JWKS (signature,
  alg allow-list, iss, aud, exp/iat, nonce), userinfo merge, identity;
* peer: ``GenericOAuthenticator.authenticate`` - token exchange (``get_token_info``), then
  ``token_to_user`` via the userinfo endpoint (``userdata_url``, its usual setup), or with
  ``userdata_from_id_token`` (decodes the id_token WITHOUT checking its signature).

Both use tornado's AsyncHTTPClient and client_secret_basic. Discovery and JWKS are fetched
once (warm-up login) and cached by ours; the peer is given the endpoints. Logins are
interleaved (ours, peer, peer-id-token, ours, ...) so machine noise hits all alike.

    .venv/bin/python benchmarks/bench_oidc_login.py [--logins 40]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import _common

_common.use_test_bed()

import httpx  # noqa: E402
from oauthenticator.generic import GenericOAuthenticator  # noqa: E402
from oauthenticator.oauth2 import _serialize_state  # noqa: E402

from afauth.idps.oidc import OIDC  # noqa: E402
from testbed.oidc.login import drive_login  # noqa: E402
from testbed.oidc.model import DEFAULT_REDIRECT_URI  # noqa: E402
from testbed.oidc.provider import OIDCTestbed  # noqa: E402

ISSUER = "iam"
USERS = ("cmsuser", "atlasuser", "duneuser", "multiuser", "afadmin")
Finish = Callable[[str, str, str], Awaitable[str]]  # (code, verifier, nonce) -> username


@dataclass
class Row:
    impl: str
    what: str
    logins: int = 0
    ok: int = 0
    wall_ms: list[float] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)


class _Handler:
    """The three things oauthenticator asks of its callback handler."""

    def __init__(self, code: str, verifier: str) -> None:
        self._code = code
        self._state: str = _serialize_state(
            {"state_id": secrets.token_hex(8), "code_verifier": verifier}
        )

    def get_argument(self, name: str, default: str | None = None) -> str | None:
        return self._code if name == "code" else default

    def get_state_cookie(self) -> str:
        return self._state


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def ours(tb: OIDCTestbed) -> tuple[OIDC, Finish]:
    info = tb[ISSUER]
    idp = OIDC(
        {
            "name": ISSUER,
            "type": "oidc",
            "issuer": info.issuer,
            "client_id": info.client_id,
            "client_secret": info.client_secret,
            "scope": info.scope.split(),
            "username_claim": "preferred_username",
            "redirect_uri": DEFAULT_REDIRECT_URI,
        }
    )

    async def finish(code: str, verifier: str, nonce: str) -> str:
        identity = await idp.complete(
            code=code, redirect_uri=DEFAULT_REDIRECT_URI, code_verifier=verifier, nonce=nonce
        )
        return identity.username

    return idp, finish


def peer(tb: OIDCTestbed, doc: dict[str, Any], *, from_id_token: bool) -> Finish:
    info = tb[ISSUER]
    auth = GenericOAuthenticator(
        client_id=info.client_id,
        client_secret=info.client_secret,
        oauth_callback_url=DEFAULT_REDIRECT_URI,
        authorize_url=doc["authorization_endpoint"],
        token_url=doc["token_endpoint"],
        scope=info.scope.split(),
        username_claim="preferred_username",
        basic_auth=True,  # client_secret_basic, as ours
        enable_pkce=True,
        allow_all=True,
        **({"userdata_from_id_token": True} if from_id_token else {}),
        **({} if from_id_token else {"userdata_url": doc["userinfo_endpoint"]}),
    )

    async def finish(code: str, verifier: str, nonce: str) -> str:
        model = await auth.authenticate(_Handler(code, verifier))
        return str(model["name"])

    return finish


async def get_code(
    endpoint: str, client_id: str, scope: str, user: str, pw: str
) -> tuple[str, ...]:
    verifier, challenge = pkce()
    nonce, state = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    params = {
        "response_type": "code", "client_id": client_id, "redirect_uri": DEFAULT_REDIRECT_URI,
        "scope": scope, "state": state, "nonce": nonce, "code_challenge": challenge,
        "code_challenge_method": "S256",
    }  # fmt: skip
    async with httpx.AsyncClient(trust_env=False, timeout=30) as browser:
        back = await drive_login(browser, f"{endpoint}?{urlencode(params)}", user, pw)
    query = parse_qs(urlsplit(back).query)
    assert query.get("state") == [state], back
    return query["code"][0], verifier, nonce


async def run(tb: OIDCTestbed, n: int) -> tuple[list[Row], dict[str, Any]]:
    info = tb[ISSUER]
    idp, ours_finish = ours(tb)
    doc = await idp.discovery()
    peer_userinfo, peer_id_token = (peer(tb, doc, from_id_token=b) for b in (False, True))
    cases: list[tuple[Row, Finish]] = [
        (Row("afauth", "complete(): token + verified id_token + userinfo"), ours_finish),
        (Row("oauthenticator", "authenticate(): token + userinfo"), peer_userinfo),
        (Row("oauthenticator", "authenticate(): token + id_token unverified"), peer_id_token),
    ]
    for i in range(n + 1):  # login 0 of each is the warm-up (discovery, JWKS, connections)
        for row, finish in cases:
            user = USERS[i % len(USERS)]
            code, verifier, nonce = await get_code(
                doc["authorization_endpoint"], info.client_id, info.scope, user,
                info.user(user).password,
            )  # fmt: skip
            c0, t0 = time.process_time(), time.perf_counter()
            try:
                name = await finish(code, verifier, nonce)
            except Exception as exc:
                logging.getLogger("bench").warning("%s login %s: %r", row.impl, user, exc)
                name = ""
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if i == 0:
                continue
            row.logins += 1
            row.ok += name == user
            row.wall_ms.append(wall * 1000)
            row.cpu_ms.append(cpu * 1000)
    fetches = {"discovery": idp.discovery_fetches, "jwks": idp.jwks_fetches}
    return [row for row, _ in cases], fetches


def _cells(f: dict[str, Any]) -> tuple[object, ...]:
    ok = f"{f['ok']}/{f['logins']}"
    return (f["impl"], f["what"], ok, f["wall_ms_p50"], f["wall_ms_p95"], f["cpu_ms_p50"],
            f["cpu_ms_p95"])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=40, help="measured logins per row (40)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    data = _common.header("bench_oidc_login")
    with OIDCTestbed(issuers=[ISSUER]) as tb:
        rows, fetches = asyncio.run(run(tb, args.logins))
    p = _common.percentile
    figures = [
        {
            "impl": r.impl, "what": r.what, "logins": r.logins, "ok": r.ok,
            "wall_ms_p50": round(p(r.wall_ms, 50), 2), "wall_ms_p95": round(p(r.wall_ms, 95), 2),
            "cpu_ms_p50": round(p(r.cpu_ms, 50), 2), "cpu_ms_p95": round(p(r.cpu_ms, 95), 2),
        }
        for r in rows
    ]  # fmt: skip
    heads = ("impl", "relying-party step", "ok", "wall p50 ms", "wall p95 ms", "CPU p50 ms",
             "CPU p95 ms")  # fmt: skip
    summary = (
        f"{args.logins} logins per row through the real IAM-like oidc-provider (code + PKCE), "
        "interleaved; timed: only the relying party's part after the redirect back (the IdP's "
        "login pages are walked untimed). CPU = this process's CPU time during that part "
        "(what the hub's event loop pays). Ours fetched discovery/JWKS "
        f"{fetches['discovery']}/{fetches['jwks']} time(s) in all (cached).\n\n"
        + _common.table(heads, [_cells(f) for f in figures])
    )
    print(summary)
    data.update(
        parameters={"logins": args.logins, "issuer": ISSUER, "users": USERS},
        ours_fetches=fetches,
        results=figures,
        samples=[asdict(r) for r in rows],
    )
    for path in _common.write("bench_oidc_login", data, summary):
        print("wrote", path.relative_to(_common.ROOT))


if __name__ == "__main__":
    main()
