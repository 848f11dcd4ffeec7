"""The whole GitHub sign-in through GitHubOAuthenticator's own code, with GitHub's API answers
given as recorded data (no network): code exchange, user, teams, the organisation/team gate,
the identity, and how provider errors become login refusals."""

from __future__ import annotations

import io
import json
from typing import Any
from urllib.parse import parse_qs

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest, HTTPResponse
from tornado.httputil import HTTPHeaders

from afauth.errors import AuthFailure
from afauth.idps.oauth import OAuthenticatorIdP

API = "https://api.github.com"
TOKEN_URL = "https://github.com/login/oauth/access_token"
USER = {"login": "Octo-Cat", "id": 583231, "name": "The Octocat", "email": None}
TEAMS = [
    {"slug": "leap-pangeo-full-access", "organization": {"login": "leap-stc"}},
    {"slug": "core", "organization": {"login": "pangeo-data"}},
]
LEAP: dict[str, Any] = {
    "name": "github",
    "type": "oauthenticator",
    "class": "github",
    "options": {
        "client_id": "Iv1.abc",
        "client_secret": "s3cret",
        "scope": ["read:org"],
        "allowed_organizations": ["leap-stc:leap-pangeo-full-access"],
        "populate_teams_in_auth_state": True,
    },
}


class RecordedGitHub:
    """Answers GitHub's API requests from a table ``(method, url) → (status, body)``."""

    def __init__(self, routes: dict[tuple[str, str], tuple[int, Any]]) -> None:
        self.routes = routes
        self.requests: list[HTTPRequest] = []

    async def fetch(self, request: HTTPRequest, raise_error: bool = True, **kw: Any) -> Any:
        self.requests.append(request)
        status, body = self.routes.get((request.method, request.url), (404, {"message": "no"}))
        if isinstance(body, Exception):
            raise body
        raw = b"" if body is None else json.dumps(body).encode()
        response = HTTPResponse(request, status, headers=HTTPHeaders(), buffer=io.BytesIO(raw))
        if raise_error and status >= 400:
            raise HTTPClientError(status, response=response)
        return response


def routes(**over: Any) -> dict[tuple[str, str], tuple[int, Any]]:
    table: dict[tuple[str, str], tuple[int, Any]] = {
        ("GET", f"{API}/user"): (200, USER),
        ("GET", f"{API}/user/teams?per_page=100"): (200, TEAMS),
        ("GET", f"{API}/user/orgs?per_page=100"): (200, [{"login": "leap-stc"}, {"login": "solo"}]),
        (
            "GET",
            f"{API}/orgs/leap-stc/teams/leap-pangeo-full-access/members/octo-cat",
        ): (204, None),
        ("POST", TOKEN_URL): (
            200,
            {"access_token": "gho_x", "token_type": "bearer", "scope": "read:org"},
        ),
    }
    for key, value in over.items():
        table[{"token": ("POST", TOKEN_URL), "user": ("GET", f"{API}/user")}[key]] = value
    return table


def github(table: dict[tuple[str, str], tuple[int, Any]], **options: Any) -> Any:
    idp = OAuthenticatorIdP({**LEAP, "options": {**LEAP["options"], **options}})
    recorded = RecordedGitHub(table)
    idp.wrapped.http_client = recorded
    return idp, recorded


async def sign_in(idp: OAuthenticatorIdP) -> Any:
    return await idp.complete(
        code="the-code",
        redirect_uri="https://hub.example.org/hub/login/github/callback",
        code_verifier="v" * 64,
        nonce="unused",
    )


async def test_a_member_of_the_allowed_team_signs_in() -> None:
    idp, recorded = github(routes())
    identity = await sign_in(idp)
    assert (identity.idp, identity.subject, identity.username) == ("github", "583231", "octo-cat")
    assert identity.idp_groups == (
        "leap-stc",
        "leap-stc:leap-pangeo-full-access",
        "pangeo-data",
        "pangeo-data:core",
        "solo",  # an organisation without a team of the person (/user/orgs)
    )
    exchange = recorded.requests[0]
    form = {k: v[0] for k, v in parse_qs(exchange.body.decode()).items()}
    assert form == {
        "code": "the-code",
        "grant_type": "authorization_code",
        "redirect_uri": "https://hub.example.org/hub/login/github/callback",
        "code_verifier": "v" * 64,
        "client_id": "Iv1.abc",
        "client_secret": "s3cret",
    }
    asked = [r.url for r in recorded.requests]
    assert asked[1:] == [
        f"{API}/user",
        f"{API}/user/orgs?per_page=100",
        f"{API}/user/teams?per_page=100",
        f"{API}/orgs/leap-stc/teams/leap-pangeo-full-access/members/octo-cat",
    ]


async def test_organisations_need_read_org_and_their_failure_is_not_fatal() -> None:
    table = routes()
    table[("GET", f"{API}/user/orgs?per_page=100")] = (403, {"message": "SAML enforced"})
    idp, _ = github(table)
    assert "solo" not in (await sign_in(idp)).idp_groups  # teams still give leap-stc
    idp, recorded = github(routes(), scope=["read:user"])
    assert "solo" not in (await sign_in(idp)).idp_groups
    assert f"{API}/user/orgs?per_page=100" not in [r.url for r in recorded.requests]


async def test_someone_outside_the_team_is_refused() -> None:
    table = routes()
    del table[("GET", f"{API}/orgs/leap-stc/teams/leap-pangeo-full-access/members/octo-cat")]
    idp, _ = github(table)
    with pytest.raises(AuthFailure, match="not allowed on this hub") as info:
        await sign_in(idp)
    assert info.value.status == 403


@pytest.mark.parametrize(
    ("over", "status", "message"),
    [
        ({"token": (502, {"message": "bad gateway"})}, 503, "did not answer as expected"),
        ({"token": (200, {"error_description": "The code is wrong"})}, 403, "refused the"),
        ({"token": (200, {"no": "token"})}, 503, "did not answer"),
        ({"user": (401, {"message": "Bad credentials"})}, 403, "refused the user info"),
        ({"user": (200, {"id": 1})}, 403, "did not give a user name"),
        ({"user": (599, OSError("connection refused"))}, 503, "did not answer"),
    ],
)
async def test_provider_errors_become_clear_refusals(
    over: dict[str, Any], status: int, message: str
) -> None:
    idp, _ = github(routes(**over))
    with pytest.raises(AuthFailure, match=message) as info:
        await sign_in(idp)
    assert info.value.status == status
    assert "gho_" not in info.value.message and "s3cret" not in info.value.message


async def test_refresh_rereads_user_and_teams_and_reapplies_the_gate() -> None:
    idp, recorded = github(routes())
    identity = await sign_in(idp)
    state = {
        "username": identity.username,
        "access_token": "gho_x",
        "refresh_token": None,
        "expires_at": None,
        "claims": dict(identity.claims),
    }
    fresh = await idp.refresh(state, margin=600)
    assert fresh is not None and fresh.subject == "583231"
    assert recorded.requests[-2].url == f"{API}/user/teams?per_page=100"  # read again
    # removed from the team at GitHub: the next refresh refuses
    del recorded.routes[
        ("GET", f"{API}/orgs/leap-stc/teams/leap-pangeo-full-access/members/octo-cat")
    ]
    with pytest.raises(AuthFailure, match="not allowed"):
        await idp.refresh(state, margin=600)
    # the token was revoked at GitHub: sign in again
    recorded.routes[("GET", f"{API}/user")] = (401, {"message": "Bad credentials"})
    with pytest.raises(AuthFailure, match="no longer accepts your session") as info:
        await idp.refresh(state, margin=600)
    assert info.value.status == 403
