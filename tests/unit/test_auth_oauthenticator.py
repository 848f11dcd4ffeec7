"""The ``oauthenticator`` IdP type without a provider: option checks, identity and groups from
GitHub payloads given as data, the wrapped class's gate, mapping of teams to groups and VOs."""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from afauth.config import build_config
from afauth.errors import AuthFailure
from afauth.identity import Identity
from afauth.idps import idp_types
from afauth.idps.oauth import OAuthenticatorIdP
from afauth.idps.oauth_support import default_groups, github_groups, resolve_class
from afauth.mapping import RulesMapper, map_identity
from afcore.issues import ConfigError

LOG = logging.getLogger("test")

GITHUB: dict[str, Any] = {
    "name": "github",
    "type": "oauthenticator",
    "class": "github",
    "options": {
        "client_id": "Iv1.abc",
        "client_secret": "s3cret",
        "scope": ["read:org"],
        "populate_teams_in_auth_state": True,
    },
}
GENERIC: dict[str, Any] = {
    "name": "partner",
    "type": "oauthenticator",
    "class": "generic",
    "options": {
        "client_id": "hub",
        "client_secret": "s3cret",
        "authorize_url": "https://sso.example.org/authorize",
        "token_url": "https://sso.example.org/token",
        "userdata_url": "https://sso.example.org/userinfo",
        "username_claim": "preferred_username",
    },
}

#: GitHub's /user payload (trimmed) and /user/teams payload, as the API returns them.
USER = {
    "login": "Octo-Cat",
    "id": 583231,
    "node_id": "MDQ6VXNlcjU4MzIzMQ==",
    "name": "The Octocat",
    "email": "octocat@github.com",
    "type": "User",
}
TEAMS = [
    {
        "name": "LEAP Pangeo full access",
        "slug": "leap-pangeo-full-access",
        "organization": {"login": "leap-stc", "id": 1},
    },
    {
        "name": "Hub admins",
        "slug": "hub-admins",
        "organization": {"login": "leap-stc", "id": 1},
    },
    {"name": "Core", "slug": "core", "organization": {"login": "pangeo-data", "id": 2}},
]


def entry(base: dict[str, Any], **options: Any) -> dict[str, Any]:
    return {**base, "options": {**base["options"], **options}}


def problems(config: dict[str, Any]) -> dict[str, str]:
    return dict(OAuthenticatorIdP.validate(config))


def build(*idps: dict[str, Any], **kw: Any) -> Any:
    return build_config(
        idps=list(idps),
        mapping=kw.get("mapping", []),
        mappers=[],
        managed_roles=[],
        vos=kw.get("vos", []),
        linked_identities={},
        allow_insecure=False,
        max_username_length=48,
        log=LOG,
    )


def github_model(idp: OAuthenticatorIdP, teams: list[Any] = TEAMS, **token: Any) -> dict[str, Any]:
    """What GitHubOAuthenticator's build_auth_state_dict + update_auth_model produce."""
    w = idp.wrapped
    token_info = {"access_token": "gho_x", "token_type": "bearer", "scope": "read:org", **token}
    state = w.build_auth_state_dict(token_info, dict(USER))
    state["teams"] = teams
    return {"name": w.normalize_username(w.user_info_to_username(USER)), "auth_state": state}


# -- registration and option checks ---------------------------------------------------------------


def test_registered_as_an_idp_type() -> None:
    assert idp_types().load("oauthenticator") is OAuthenticatorIdP


def test_github_and_generic_configs_are_valid() -> None:
    assert problems(GITHUB) == {}
    assert problems(GENERIC) == {}
    config = build(GITHUB, GENERIC)
    github = config.idps["github"]
    assert isinstance(github, OAuthenticatorIdP)
    assert github.display_name == "GitHub" and github.subject_claim == "id"
    assert github.wrapped.authorize_url == "https://github.com/login/oauth/authorize"
    assert github.wrapped.allow_all is True  # no allowed_* option: the hub's rules decide
    assert config.idps["partner"].subject_claim == "sub"  # type: ignore[attr-defined]


def test_an_allowed_option_turns_the_gate_on() -> None:
    idp = OAuthenticatorIdP(entry(GITHUB, allowed_organizations=["leap-stc"]))
    assert idp.wrapped.allow_all is False
    assert idp.wrapped.allowed_organizations == {"leap-stc"}  # a list became the trait's set


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("github", "GitHubOAuthenticator"),
        ("gitlab", "GitLabOAuthenticator"),
        ("google", "GoogleOAuthenticator"),
        ("azuread", "AzureAdOAuthenticator"),
        ("globus", "GlobusOAuthenticator"),
        ("generic-oauth", "GenericOAuthenticator"),
        ("oauthenticator.generic:GenericOAuthenticator", "GenericOAuthenticator"),
        ("oauthenticator.github.GitHubOAuthenticator", "GitHubOAuthenticator"),
    ],
)
def test_class_names(name: str, expected: str) -> None:
    assert resolve_class(name).__name__ == expected


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("githb", "unknown class 'githb'; use one of auth0, azuread"),
        ("json:dumps", "is not an oauthenticator.OAuthenticator subclass"),
        ("nosuchmodule:X", "cannot import"),
        ("oauthenticator.mediawiki:MWOAuthenticator", "MediaWiki (OAuth 1)"),
    ],
)
def test_unknown_class(name: str, message: str) -> None:
    assert message in problems({**GITHUB, "class": name})["class"]


def test_every_problem_with_its_key_path_at_hub_start() -> None:
    bad = entry(
        GITHUB,
        allowed_organisations=["leap-stc"],
        populate_teams_in_auth_state="yes",
        admin_users=["octo-cat"],
        oauth_callback_url="https://hub.example.org/hub/oauth_callback",
        client_secret=["not", "a", "string"],
    )
    with pytest.raises(ConfigError) as info:
        build(GENERIC, bad)
    found = {i.path: i.message for i in info.value.issues}
    assert set(found) == {
        "idps[1].options.allowed_organisations",
        "idps[1].options.populate_teams_in_auth_state",
        "idps[1].options.admin_users",
        "idps[1].options.oauth_callback_url",
        "idps[1].options.client_secret",
    }
    unknown = found["idps[1].options.allowed_organisations"]
    assert "unknown option for GitHubOAuthenticator" in unknown
    assert "did you mean 'allowed_organizations'?" in unknown
    assert "populate_teams_in_auth_state" in unknown  # the class's own traits are listed
    assert "expected a boolean" in found["idps[1].options.populate_teams_in_auth_state"]
    assert "mapping rule" in found["idps[1].options.admin_users"]
    assert "redirect_uri" in found["idps[1].options.oauth_callback_url"]
    assert "s3cret" not in str(info.value) and "not" not in found["idps[1].options.client_secret"]


def test_generic_needs_its_endpoints_and_client() -> None:
    found = problems({**GENERIC, "options": {"username_claim": "sub"}})
    assert set(found) == {
        "options.client_id",
        "options.client_secret",
        "options.authorize_url",
        "options.token_url",
        "options.userdata_url",
    }
    insecure = problems(entry(GENERIC, token_url="http://sso.example.org/token"))
    assert "must use https" in insecure["options.token_url"]
    from_id_token = {k: v for k, v in GENERIC["options"].items() if k != "userdata_url"}
    assert problems({**GENERIC, "options": {**from_id_token, "userdata_from_id_token": True}}) == {}


def test_cross_option_errors_of_the_class_are_reported() -> None:
    both = entry(GENERIC, userdata_from_id_token=True)  # and userdata_url: traitlets refuse
    assert "GenericOAuthenticator refuses these options" in problems(both)["options"]


def test_client_secret_file(tmp_path: Any) -> None:
    secret = tmp_path / "secret"
    with_file = {**GITHUB, "client_secret_file": str(secret)}
    with_file["options"] = {k: v for k, v in GITHUB["options"].items() if k != "client_secret"}
    assert "does not exist" in problems(with_file)["client_secret_file"]
    secret.write_text("from-the-file\n")
    assert problems(with_file) == {}
    assert "not both" not in str(problems(with_file))
    assert "options.client_secret" in str(problems({**GITHUB, "client_secret_file": str(secret)}))
    idp = OAuthenticatorIdP(with_file)
    assert idp._client().client_secret == "from-the-file"


# -- identity from GitHub payloads given as data ---------------------------------------------------


def test_github_teams_become_org_and_org_team_groups() -> None:
    assert github_groups(TEAMS) == [
        "leap-stc",
        "leap-stc:hub-admins",
        "leap-stc:leap-pangeo-full-access",
        "pangeo-data",
        "pangeo-data:core",
    ]
    assert github_groups([{"slug": "x"}, "junk", {"organization": {"login": "o"}}]) == ["o"]
    assert github_groups(None, [{"login": "solo-org"}]) == ["solo-org"]


async def test_identity_from_a_github_user_and_teams_payload() -> None:
    idp = OAuthenticatorIdP(GITHUB)
    model = github_model(idp, expires_in=28800, refresh_token="ghr_y")
    model["groups"] = sorted(await idp.wrapped.get_user_groups(model["auth_state"]))
    identity = idp.identity_from_model(model)
    assert identity.idp == "github"
    assert identity.subject == "583231"  # the numeric id, not the login
    assert identity.username == "octo-cat"
    assert identity.email is None and identity.email_verified is False  # GitHub: not vouched for
    assert identity.idp_groups == tuple(github_groups(TEAMS))
    assert identity.claims["groups"] == list(identity.idp_groups)
    assert identity.claims["login"] == "Octo-Cat"
    assert identity.claims["oauth"] == {"token_type": "bearer", "scope": ["read:org"]}
    assert identity.display_name == "The Octocat"
    assert identity.tokens is not None
    assert identity.tokens.access_token == "gho_x" and identity.tokens.refresh_token == "ghr_y"
    expires_at = identity.tokens.expires_at
    assert expires_at is not None and abs(expires_at - (time.time() + 28800)) < 5


def test_github_oauth_app_tokens_do_not_expire() -> None:
    idp = OAuthenticatorIdP(GITHUB)
    identity = idp.identity_from_model({**github_model(idp), "groups": []})
    assert identity.tokens is not None
    assert identity.tokens.expires_at is None and identity.tokens.refresh_token is None


def test_without_a_stable_id_the_login_is_refused() -> None:
    idp = OAuthenticatorIdP(GITHUB)
    model = github_model(idp)
    del model["auth_state"]["github_user"]["id"]
    with pytest.raises(AuthFailure, match="did not give a stable account id"):
        idp.identity_from_model(model)


def test_email_user_names_need_a_verified_email() -> None:
    idp = OAuthenticatorIdP(entry(GENERIC, username_claim="email"))
    user = {"sub": "abc-1", "email": "Jo@Example.org", "email_verified": False}
    state = idp.wrapped.build_auth_state_dict({"access_token": "t", "token_type": "Bearer"}, user)
    model = {"name": "jo@example.org", "auth_state": state, "groups": []}
    with pytest.raises(AuthFailure, match="has not verified your email"):
        idp.identity_from_model(model)
    user["email_verified"] = True
    identity = idp.identity_from_model(model)
    assert identity.username == "jo-example.org" and identity.email == "Jo@Example.org"
    assert identity.subject == "abc-1"


def test_generic_groups_from_the_user_info_or_a_configured_key() -> None:
    assert default_groups({"oauth_user": {"groups": ["a", "b"]}}, "oauth_user") == ["a", "b"]
    assert default_groups({"globus_groups": ["g-1"]}, "globus_user") == ["g-1"]
    assert default_groups({"google_user": {"google_groups": ["x@d"]}}, "google_user") == ["x@d"]
    idp = OAuthenticatorIdP(entry(GENERIC, auth_state_groups_key="oauth_user.roles"))
    assert idp.wrapped.auth_state_groups_key == "oauth_user.roles"  # the site's key is kept


# -- the wrapped class's gate ------------------------------------------------------------------


async def test_the_wrapped_check_allowed_is_the_idps_gate() -> None:
    idp = OAuthenticatorIdP(entry(GITHUB, allowed_users=["someone-else"]))
    model = {**github_model(idp), "admin": None, "groups": []}
    with pytest.raises(AuthFailure, match="not allowed on this hub") as info:
        await idp._finish(dict(model))
    assert info.value.status == 403
    allowed = OAuthenticatorIdP(entry(GITHUB, allowed_users=["octo-cat"]))
    identity = await allowed._finish({**github_model(allowed), "admin": None, "groups": []})
    assert identity.username == "octo-cat"


async def test_the_wrapped_blocked_users_are_refused() -> None:
    idp = OAuthenticatorIdP(entry(GITHUB, blocked_users=["octo-cat"]))
    with pytest.raises(AuthFailure, match="not allowed"):
        await idp._finish({**github_model(idp), "admin": None, "groups": []})


# -- mapping teams to hub groups and VOs -------------------------------------------------------


async def test_teams_map_to_groups_vos_and_admin() -> None:
    rules = [
        {"idp": "github", "claim": "groups", "value": "leap-stc", "vo": "leap"},
        {
            "idp": "github",
            "claim": "groups",
            "match": "leap-stc:leap-pangeo-(?P<tier>base|full)-access",
            "group": "leap-{tier}",
        },
        {"idp": "github", "claim": "groups", "value": "leap-stc:hub-admins", "admin": True},
        {"idp": "other", "claim": "groups", "value": "pangeo-data", "vo": "pangeo"},
    ]
    idp = OAuthenticatorIdP(GITHUB)
    model = github_model(idp)
    model["groups"] = sorted(await idp.wrapped.get_user_groups(model["auth_state"]))
    identity: Identity = idp.identity_from_model(model)
    mapped, _ = map_identity(
        [RulesMapper({"rules": rules})], identity, vos={"leap", "pangeo"}, roles=()
    )
    assert mapped.groups == {"leap-full"}
    assert mapped.vos == {"leap"}
    assert mapped.admin is True


# -- the flow: URLs from the wrapped instance ----------------------------------------------------


async def test_authorization_url_from_the_wrapped_class_with_pkce() -> None:
    idp = OAuthenticatorIdP(entry(GITHUB, extra_authorize_params={"allow_signup": "false"}))
    url = await idp.authorization_url(
        redirect_uri="https://hub.example.org/hub/login/github/callback",
        state="st",
        nonce="no",
        code_challenge="ch",
    )
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == idp.wrapped.authorize_url
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query == {
        "allow_signup": "false",
        "response_type": "code",
        "client_id": "Iv1.abc",
        "redirect_uri": "https://hub.example.org/hub/login/github/callback",
        "scope": "read:org",
        "state": "st",
        "code_challenge": "ch",
        "code_challenge_method": "S256",
    }
    no_pkce = OAuthenticatorIdP(entry(GITHUB, enable_pkce=False))
    url = await no_pkce.authorization_url(
        redirect_uri="https://h/cb", state="s", nonce="n", code_challenge="c"
    )
    assert "code_challenge" not in url


async def test_refresh_without_tokens_to_renew() -> None:
    idp = OAuthenticatorIdP({**GITHUB, "refresh": False})
    state = {"access_token": "gho_x", "expires_at": None, "username": "octo-cat"}
    assert await idp.refresh(state, margin=600) is None
    with pytest.raises(AuthFailure, match="session has expired"):
        await idp.refresh({**state, "expires_at": time.time() - 5}, margin=600)
    with pytest.raises(AuthFailure, match="session has expired"):
        await idp.refresh({"access_token": None}, margin=600)
