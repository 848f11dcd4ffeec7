"""Sign-in flow helpers: PKCE, login state and ``next`` checks (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afauth.flow import LoginState, check_state, pkce_challenge, safe_next


def test_pkce_s256_matches_rfc7636_example() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def _state(**over: Any) -> LoginState:
    base: dict[str, Any] = {
        "idp": "cern",
        "state": "s1",
        "nonce": "n1",
        "verifier": "v1",
        "next_url": "/hub/home",
        "created": 1000.0,
    }
    base.update(over)
    return LoginState(**base)


def test_login_state_round_trip_and_garbage() -> None:
    state = _state()
    assert LoginState.decode(state.encode()) == state
    assert LoginState.decode("not json") is None
    assert LoginState.decode('{"i": 1}') is None


@pytest.mark.parametrize(
    ("saved", "idp", "returned", "now", "used", "problem"),
    [
        (_state(), "cern", "s1", 1001.0, (), None),
        (None, "cern", "s1", 1001.0, (), "no sign-in was started"),
        (_state(), "cern", None, 1001.0, (), "returned no state"),
        (_state(), "iam", "s1", 1001.0, (), "another identity provider"),
        (_state(), "cern", "s2", 1001.0, (), "another tab"),
        (_state(), "cern", "s1", 1001.0, ("s1",), "already been completed"),
        (_state(), "cern", "s1", 1000.0 + 601, (), "took too long"),
    ],
)
def test_check_state(saved, idp, returned, now, used, problem) -> None:
    got = check_state(saved, idp, returned, now=now, max_age=600, used=used)
    assert (got is None) if problem is None else (problem in str(got))


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.example/",
        "//evil.example/",
        "///evil.example/",
        "/\\evil.example/",
        "\\\\evil.example",
        "javascript:alert(1)",
        "http:/evil.example",
        "/hub/\r\nSet-Cookie: x=1",
        "hub/home",
        "/other-app/",
        "",
    ],
)
def test_safe_next_refuses_non_local_urls(url: str) -> None:
    assert safe_next(url, "/hub-base/") == ""


@pytest.mark.parametrize(
    "url", ["/hub-base/hub/home", "/hub-base/user/alice/lab?x=1#y", "/hub-base/"]
)
def test_safe_next_keeps_local_paths(url: str) -> None:
    assert safe_next(url, "/hub-base/") == url


@given(st.text(max_size=80))
def test_safe_next_never_returns_a_url_with_a_host(url: str) -> None:
    got = safe_next(url, "/")
    assert got in ("", url)
    if got:
        assert got.startswith("/") and not got.startswith("//") and "\\" not in got
