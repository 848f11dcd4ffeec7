"""The auth_state contract: keys, JSON-safety, round trip, redaction."""

from __future__ import annotations

import json
from types import MappingProxyType

from afauth.identity import Identity, Tokens
from afauth.state import CONTRACT, EXTRAS, build_auth_state, identity_from_state, redacted

IDENTITY = Identity(
    idp="fnal",
    subject="alice",
    username="alice",
    email="alice@fnal.gov",
    email_verified=True,
    uid=50001,
    gid=5063,
    groups=("eaf-users", "cms"),
    vos=("cms",),
    claims=MappingProxyType({"uid": "alice", "nested": {"t": ("a", 1)}, "odd": object()}),
    tokens=Tokens("access-xyz", "refresh-xyz", "id-xyz", 1795316624.5),
    idp_groups=("cms", "us_cms"),
    supplemental_gids=(5064,),
    home="/home/alice",
    display_name="Alice Anderson",
)


def test_contract_keys_and_values() -> None:
    state = build_auth_state(IDENTITY)
    assert list(state) == [*CONTRACT, *EXTRAS]
    assert state["groups"] == ["cms", "eaf-users"]
    assert (state["uid"], state["gid"], state["supplemental_gids"]) == (50001, 5063, [5064])
    assert state["access_token"] == "access-xyz" and state["expires_at"] == 1795316624.5
    json.dumps(state)  # JupyterHub stores it as JSON
    assert state["claims"]["nested"] == {"t": ["a", 1]}


def test_without_tokens_the_token_keys_are_null() -> None:
    state = build_auth_state(Identity(idp="demo", subject="ada", username="ada"))
    assert all(
        state[k] is None for k in ("access_token", "refresh_token", "id_token", "expires_at")
    )
    assert state["uid"] is None and state["email"] is None


def test_round_trip_for_re_mapping() -> None:
    back = identity_from_state(build_auth_state(IDENTITY))
    assert (back.idp, back.subject, back.username, back.uid, back.gid) == (
        "fnal",
        "alice",
        "alice",
        50001,
        5063,
    )
    assert back.tokens == IDENTITY.tokens
    assert back.idp_groups == IDENTITY.idp_groups and back.home == "/home/alice"


def test_redacted_copy_is_safe_to_log() -> None:
    text = repr(redacted(build_auth_state(IDENTITY)))
    assert "xyz" not in text and "<redacted>" in text and "claims" not in text
    assert redacted(None) == {}
    assert "xyz" not in repr(IDENTITY.tokens)  # repr hides tokens too
