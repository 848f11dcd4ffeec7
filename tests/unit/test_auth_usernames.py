"""Hub names from IdP identifiers: safe charset, no unicode tricks, no truncation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afauth.errors import AuthFailure
from afauth.usernames import is_safe_username, normalise_username


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("alice", "alice"),
        ("Alice", "alice"),
        ("o'brien", "o-brien"),
        ("pat+ops", "pat-ops"),
        ("cmsuser@ucsd.edu", "cmsuser-ucsd.edu"),
        ("first.last", "first.last"),
        ("a_b", "a_b"),
        ("5f0e7c1a-2b3d-4e5f-8a9b-0c1d2e3f4a5b", "5f0e7c1a-2b3d-4e5f-8a9b-0c1d2e3f4a5b"),
        ("--x--", "x"),
        ("a..b", "a.b"),
        ("a.-_b", "a-b"),
        ("http://cilogon.org/serverA/users/1", "http-cilogon.org-servera-users-1"),
    ],
)
def test_normalises_to_safe_names(raw: str, name: str) -> None:
    assert normalise_username(raw) == name


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "no usable user name"),
        (None, "no usable user name"),
        (42, "no usable user name"),
        ("\uff41\uff44\uff4d\uff49\uff4e", "non-ASCII"),  # full-width
        ("\u0430dmin", "non-ASCII"),  # Cyrillic a
        ("admin\u200b", "non-ASCII"),  # zero-width space
        ("admin\u202e", "non-ASCII"),  # bidi override
        ("josé", "non-ASCII"),
        ("ad min", "spaces or control"),
        ("admin\n", "spaces or control"),
        ("admin\x00", "spaces or control"),
        ("@@@", "no letters or digits"),
        ("a" * 49, "longer than 48"),
        ("a" * 10_000, "too long"),
    ],
)
def test_refuses_tricks_and_oversized_names(raw: object, reason: str) -> None:
    with pytest.raises(AuthFailure) as info:
        normalise_username(raw)
    assert reason in info.value.message


def test_length_cap_is_configurable() -> None:
    assert normalise_username("a" * 60, max_length=64) == "a" * 60
    with pytest.raises(AuthFailure):
        normalise_username("abcdef", max_length=5)


@given(st.text(max_size=80))
def test_result_is_safe_and_idempotent(raw: str) -> None:
    try:
        name = normalise_username(raw)
    except AuthFailure:
        return
    assert is_safe_username(name)
    assert name.isascii() and name == name.lower()
    assert normalise_username(name) == name


@given(st.text(alphabet=st.characters(min_codepoint=0x80), min_size=1, max_size=20))
def test_any_non_ascii_is_refused(raw: str) -> None:
    with pytest.raises(AuthFailure):
        normalise_username("user" + raw)
