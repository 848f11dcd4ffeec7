"""Per-service tokens by token exchange (afauth.exchange): configuration checks with key paths,
scope templates, which services a user gets, and how sign-in and renewals use the answers."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import pytest

from afauth import exchange
from afauth.errors import AuthFailure
from afauth.exchange import Service
from afauth.state import redacted
from unit.test_auth_config import OIDC, has, problems

RUCIO = {
    "audience": "https://rucio.example",
    "scopes": ["storage.read:/", "storage.modify:/user/{username}"],
}


def services_problems(services: object) -> list[str]:
    return problems(idps=[{**OIDC, "services": services}])


# -- configuration ------------------------------------------------------------------------------


def test_valid_services_build() -> None:
    assert services_problems({"rucio": RUCIO, "eos": {"audience": "eos", "vos": ["cms"]}}) == []
    parsed, found = exchange.parse_services({"rucio": {**RUCIO, "required": True}})
    assert found == []
    assert parsed == (
        Service("rucio", "https://rucio.example", tuple(RUCIO["scopes"]), required=True),
    )


@pytest.mark.parametrize(
    ("services", "path", "text"),
    [
        ({"Rucio": RUCIO}, "idps[0].services.Rucio", "lower-case"),
        ({"rucio": {"scopes": ["x"]}}, "idps[0].services.rucio.audience", "non-empty string"),
        ({"rucio": {**RUCIO, "scopes": "storage.read:/"}}, "idps[0].services.rucio.scopes", "list"),
        (
            {"rucio": {**RUCIO, "scopes": ["storage.read:/{home}"]}},
            "idps[0].services.rucio.scopes[0]",
            "unknown placeholder",
        ),
        (
            {"rucio": {**RUCIO, "scopes": ["storage.read:/ openid"]}},
            "idps[0].services.rucio.scopes[0]",
            "without spaces",
        ),
        ({"rucio": {**RUCIO, "vo": ["cms"]}}, "idps[0].services.rucio.vo", "unknown key"),
        ({"rucio": {**RUCIO, "vos": [1]}}, "idps[0].services.rucio.vos", "list of names"),
        ({"rucio": {**RUCIO, "required": "yes"}}, "idps[0].services.rucio.required", "true or"),
        ({"rucio": "https://rucio.example"}, "idps[0].services.rucio", "expected a mapping"),
        (["rucio"], "idps[0].services", "mapping"),
    ],
)
def test_bad_services_are_reported_with_their_key_path(
    services: object, path: str, text: str
) -> None:
    found = services_problems(services)
    assert has(found, path, text), found


def test_services_are_an_oidc_option_only() -> None:
    ldap = {
        "name": "fnal",
        "type": "ldap",
        "servers": ["ldaps://ldap.fnal.gov"],
        "user_search_base": "ou=People,dc=fnal,dc=gov",
        "services": {"rucio": RUCIO},
    }
    assert has(problems(idps=[ldap]), "idps[0].services", "unknown")


# -- decisions ----------------------------------------------------------------------------------


def test_which_services_for_which_vo_or_group() -> None:
    everyone = Service("rucio", "r")
    cms = Service("eos", "e", vos=frozenset({"cms"}))
    ops = Service("xrootd", "x", vos=frozenset({"atlas"}), groups=frozenset({"ops"}))
    every = [everyone, cms, ops]
    assert exchange.services_for(every, vos=["cms"], groups=[]) == [everyone, cms]
    assert exchange.services_for(every, vos=["dune"], groups=["ops"]) == [everyone, ops]
    assert exchange.services_for(every, vos=[], groups=[]) == [everyone]


def test_scopes_are_filled_from_the_identity() -> None:
    service = Service("rucio", "https://rucio.example/{idp}", tuple(RUCIO["scopes"]))
    values = exchange.fill_values({"username": "carla", "subject": "5f0e", "idp": "iam"})
    assert exchange.request_for(service, values) == (
        "https://rucio.example/iam",
        "storage.read:/ storage.modify:/user/carla",
    )


@pytest.mark.parametrize("username", ["", "a b", "../root", "x/y", "carla storage.modify:/"])
def test_a_value_that_would_change_a_scope_is_refused(username: str) -> None:
    service = Service("rucio", "r", ("storage.modify:/user/{username}",))
    with pytest.raises(ValueError):
        exchange.request_for(service, {"username": username, "subject": "s", "idp": "i"})


def test_the_request_is_rfc_8693() -> None:
    form = exchange.exchange_form("AT", "https://rucio.example", "storage.read:/")
    assert form == {
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": "AT",
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "requested_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "audience": "https://rucio.example",
        "scope": "storage.read:/",
    }
    assert "scope" not in exchange.exchange_form("AT", "aud", "")


def test_answers_become_entries() -> None:
    ok = exchange.entry_from_response(
        {"access_token": "T", "expires_in": 60, "scope": "storage.read:/", "token_type": "Bearer"},
        "aud",
        "storage.read:/ storage.create:/",
        1000.0,
    )
    assert ok == {
        "access_token": "T",
        "expires_at": 1060.0,
        "audience": "aud",
        "scope": "storage.read:/",  # what the IdP granted
        "error": None,
    }
    refresh = {
        "access_token": "T",
        "issued_token_type": "urn:ietf:params:oauth:token-type:refresh_token",
    }
    assert exchange.entry_from_response(refresh, "a", "s", 0)["error"]
    assert exchange.entry_from_response({}, "a", "s", 0)["access_token"] is None


def test_a_renewal_that_fails_keeps_the_earlier_valid_token() -> None:
    now = 1000.0
    new = {
        "rucio": exchange.failed("r", "s", "invalid_target"),
        "eos": exchange.failed("e", "s", "no answer"),
        "xrootd": {**exchange.failed("x", "s", ""), "access_token": "X2", "error": None},
    }
    earlier = {
        "rucio": {"access_token": "R1", "expires_at": now + 5, "error": None},
        "eos": {"access_token": "E1", "expires_at": now - 1, "error": None},  # expired
        "xrootd": {"access_token": "X1", "expires_at": now + 5, "error": None},
    }
    kept = exchange.keep_earlier(new, earlier, now)
    assert kept["rucio"]["access_token"] == "R1" and kept["rucio"]["error"] == "invalid_target"
    assert kept["eos"]["access_token"] is None
    assert kept["xrootd"]["access_token"] == "X2"


def test_service_tokens_are_redacted() -> None:
    state = {"access_token": "A", exchange.STATE_KEY: {"rucio": {"access_token": "R"}}}
    assert redacted(state)[exchange.STATE_KEY] == "<redacted>"


# -- with_service_tokens, with a stand-in token endpoint ------------------------------------------


class Endpoint:
    """The three things the exchange uses of an OIDC IdP; answers per audience."""

    name = "iam"
    display_name = "IAM"
    options: Mapping[str, Any] = {"services": None}
    log = logging.getLogger("test.exchange")

    def __init__(self, services: Mapping[str, Any], answers: Mapping[str, Any]) -> None:
        self.services = services
        self.answers = answers
        self.forms: list[dict[str, str]] = []

    def opt(self, key: str) -> Any:
        return self.services if key == "services" else None

    async def _token_request(self, form: dict[str, str], what: str) -> tuple[int, dict[str, Any]]:
        self.forms.append(form)
        answer = self.answers[form["audience"]]
        if isinstance(answer, AuthFailure):
            raise answer
        return answer

    def _token_problem(self, status: int, body: Mapping[str, Any], what: str) -> AuthFailure:
        return AuthFailure("refused", detail=str(body.get("error")), status=403)


def model(token: str = "AT", vos: tuple[str, ...] = ("cms",)) -> dict[str, Any]:  # noqa: S107
    state = {
        "idp": "iam",
        "subject": "s-1",
        "username": "carla",
        "access_token": token,
        "vos": list(vos),
        "groups": [],
    }
    return {"name": "carla", "auth_state": state}


SERVICES = {
    "rucio": RUCIO,
    "eos": {"audience": "eos", "scopes": ["storage.read:/eos"], "vos": ["cms"]},
    "atlas": {"audience": "atlas", "vos": ["atlas"]},
}
GOOD = {
    "https://rucio.example": (200, {"access_token": "R", "expires_in": 60}),
    "eos": (400, {"error": "invalid_target"}),
}


async def test_sign_in_exchanges_one_token_per_service_of_the_user() -> None:
    idp = Endpoint(SERVICES, GOOD)
    before = time.time()
    out = await exchange.with_service_tokens(idp, model())
    tokens = out["auth_state"][exchange.STATE_KEY]
    assert set(tokens) == {"rucio", "eos"}  # not atlas: carla is in cms only
    assert tokens["rucio"]["access_token"] == "R"
    assert tokens["rucio"]["scope"] == "storage.read:/ storage.modify:/user/carla"
    assert tokens["rucio"]["expires_at"] >= before + 60
    assert tokens["eos"] == exchange.failed("eos", "storage.read:/eos", "invalid_target")
    assert {f["audience"] for f in idp.forms} == {"https://rucio.example", "eos"}
    assert all(f["subject_token"] == "AT" for f in idp.forms)


async def test_a_required_service_refuses_the_sign_in_but_not_a_renewal() -> None:
    services = {**SERVICES, "eos": {**SERVICES["eos"], "required": True}}
    with pytest.raises(AuthFailure):
        await exchange.with_service_tokens(Endpoint(services, GOOD), model())
    previous = model("OLD")["auth_state"]
    out = await exchange.with_service_tokens(Endpoint(services, GOOD), model(), previous)
    assert out["auth_state"][exchange.STATE_KEY]["eos"]["access_token"] is None


async def test_an_unreachable_idp_leaves_the_service_without_a_token() -> None:
    down = AuthFailure("down", status=503)
    idp = Endpoint({"rucio": RUCIO}, {"https://rucio.example": down})
    out = await exchange.with_service_tokens(idp, model())
    assert out["auth_state"][exchange.STATE_KEY]["rucio"]["error"] == "no answer"


async def test_same_access_token_keeps_the_tokens_new_one_exchanges_again() -> None:
    idp = Endpoint(SERVICES, GOOD)
    first = (await exchange.with_service_tokens(idp, model()))["auth_state"]
    calls = len(idp.forms)
    again = await exchange.with_service_tokens(idp, model(), first)  # a visit, token not due
    assert again["auth_state"][exchange.STATE_KEY] == first[exchange.STATE_KEY]
    assert len(idp.forms) == calls
    left = await exchange.with_service_tokens(idp, model(vos=()), first)  # left the VO
    assert set(left["auth_state"][exchange.STATE_KEY]) == {"rucio"}
    renewed = await exchange.with_service_tokens(idp, model("AT2"), first)
    assert len(idp.forms) == calls + 2
    assert idp.forms[-1]["subject_token"] == "AT2"
    assert renewed["auth_state"][exchange.STATE_KEY]["rucio"]["access_token"] == "R"


async def test_nothing_without_services_or_an_access_token() -> None:
    idp = Endpoint({}, {})
    assert (
        exchange.STATE_KEY not in (await exchange.with_service_tokens(idp, model()))["auth_state"]
    )
    revoked = model("")
    revoked["auth_state"][exchange.STATE_KEY] = {"rucio": {"access_token": "R"}}
    out = await exchange.with_service_tokens(Endpoint(SERVICES, GOOD), revoked)
    assert exchange.STATE_KEY not in out["auth_state"]


async def test_idps_without_the_option_are_left_alone() -> None:
    class Ldap:
        options: Mapping[str, Any] = {}

        def opt(self, key: str) -> Any:
            return {"rucio": RUCIO}

    out = await exchange.with_service_tokens(Ldap(), model())
    assert exchange.STATE_KEY not in out["auth_state"]


def test_the_refresher_renews_for_the_first_token_to_expire() -> None:
    state: dict[str, Any] = {"expires_at": 100.0}
    assert exchange.earliest_expiry(state) == 100.0
    state[exchange.STATE_KEY] = {
        "rucio": {"access_token": "R", "expires_at": 80.0},  # the IdP gave it a shorter life
        "eos": {"access_token": None, "expires_at": 10.0},  # no token: nothing to renew for
        "xrootd": {"access_token": "X", "expires_at": None},
    }
    assert exchange.earliest_expiry(state) == 80.0
    assert exchange.earliest_expiry({"expires_at": None}) is None
