"""The LEAP-Pangeo GitHub configuration in docs/idps/oauthenticator.md loads and validates."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from afauth.config import build_config
from afauth.idps.oauth import OAuthenticatorIdP
from afauth.mapping import map_identity

PAGE = Path(__file__).resolve().parents[2] / "docs" / "idps" / "oauthenticator.md"
MARKER = re.compile(r"<!-- oauthenticator-example: leap-pangeo -->\n```python\n(.*?)```", re.S)


def leap_block() -> str:
    found = MARKER.findall(PAGE.read_text(encoding="utf-8"))
    assert len(found) == 1, "the LEAP-Pangeo block is missing from the page"
    return str(found[0])


def load(code: str) -> Any:
    c = Config()
    exec(compile(code, str(PAGE), "exec"), {"c": c})  # noqa: S102
    auth = c.AFAuthenticator
    return c, build_config(
        idps=auth.idps,
        mapping=auth.mapping,
        mappers=[],
        managed_roles=[],
        vos=auth.vos,
        linked_identities={},
        allow_insecure=False,
        max_username_length=48,
        log=logging.getLogger("docs"),
    )


@pytest.fixture(autouse=True)
def secret_file_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("afauth.idps.base.file_problem", lambda path: None)


async def test_leap_pangeo_github_block_validates_and_maps_teams() -> None:
    c, config = load(leap_block())
    assert c.JupyterHub.authenticator_class == "af"
    assert c.AFAuthenticator.allowed_idps == {"github"}
    idp = config.idps["github"]
    assert isinstance(idp, OAuthenticatorIdP)
    w = idp.wrapped
    assert type(w).__name__ == "GitHubOAuthenticator"
    assert w.allowed_organizations == {
        "leap-stc:leap-pangeo-base-access",
        "leap-stc:leap-pangeo-full-access",
        "leap-stc:leap-pangeo-research",
    }
    assert w.allow_all is False and w.populate_teams_in_auth_state is True
    assert "read:org" in w.scope and idp.subject_claim == "id"
    # a member of the full-access and research teams, as GitHub's API describes them
    teams = [
        {"slug": s, "organization": {"login": "leap-stc"}}
        for s in ("leap-pangeo-full-access", "leap-pangeo-research")
    ]
    user = {"login": "Funky-User", "id": 4242, "email": None, "name": "Funky"}
    state = w.build_auth_state_dict({"access_token": "t", "token_type": "bearer"}, user)
    state["teams"] = teams
    model = {"name": w.normalize_username(w.user_info_to_username(user)), "auth_state": state}
    model["groups"] = sorted(await w.get_user_groups(state))
    identity = idp.identity_from_model(model)
    assert (identity.username, identity.subject) == ("funky-user", "4242")
    mapped, _ = map_identity(config.mappers, identity, vos=config.vos, roles=())
    assert mapped.vos == {"leap"}
    assert mapped.groups == {"leap-full", "leap-research"}
    assert mapped.admin is False


def test_a_typo_in_the_block_is_reported_with_its_key_path() -> None:
    code = leap_block().replace('"allowed_organizations"', '"allowed_orgs"')
    with pytest.raises(Exception, match=r"idps\[0\]\.options\.allowed_orgs: unknown option"):
        load(code)
