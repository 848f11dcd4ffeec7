"""The jupyterhub_config.py snippets in docs/ are valid configurations."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

from afauth.config import build_config

DOCS = Path(__file__).resolve().parents[2] / "docs"
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def snippets(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


def run(code: str, c: Config | None = None) -> Config:
    c = c if c is not None else Config()
    exec(compile(code, "<doc>", "exec"), {"c": c, "get_config": lambda: c})  # noqa: S102
    return c


def build(c: Config) -> Any:
    auth = c.AFAuthenticator
    return build_config(
        idps=auth.get("idps"),
        mapping=auth.get("mapping", []),
        mappers=auth.get("mappers", []),
        managed_roles=auth.get("managed_roles", []),
        vos=auth.get("vos", []),
        linked_identities=auth.get("linked_identities", {}),
        allow_insecure=bool(auth.get("allow_insecure_dev_idp", False)),
        max_username_length=48,
        log=logging.getLogger("docs"),
    )


@pytest.fixture(autouse=True)
def secrets_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples name secret and CA files of a real deployment."""
    monkeypatch.setattr("afauth.idps.base.file_problem", lambda path: None)


@pytest.mark.parametrize("page", sorted((DOCS / "idps").glob("*.md")), ids=lambda p: p.stem)
def test_every_idp_page_has_a_working_config(page: Path) -> None:
    blocks = [b for b in snippets(page) if "c.AFAuthenticator.idps" in b]
    assert blocks, f"{page.name} has no jupyterhub_config.py example"
    for code in blocks:
        c = run(code)
        assert c.JupyterHub.authenticator_class == "af"
        config = build(c)
        assert {type(i).type_name for i in config.idps.values()} == {page.stem}


def test_every_idp_type_has_a_page() -> None:
    from afauth.idps import idp_types

    assert sorted(p.stem for p in (DOCS / "idps").glob("*.md")) == idp_types().names()


def test_mapping_page_snippets_are_valid() -> None:
    c = run(
        """
c.AFAuthenticator.idps = [
    {"name": "fnal", "type": "ldap", "servers": ["ldaps://ldap.fnal.gov"],
     "bind_dn": "cn=hub", "bind_password": "x", "user_search_base": "ou=People"},
    {"name": "iam", "type": "iam", "issuer": "https://iam.example.org/", "client_id": "x"},
]
"""
    )
    for code in snippets(DOCS / "mapping.md"):
        if '"voms"' not in code:  # that one needs the sample site plugin installed
            run(code, c)
    config = build(c)
    assert sorted(config.roles) == ["vo-manager-atlas", "vo-manager-cms"]


def test_authenticator_page_snippets_run() -> None:
    c = Config()
    for code in snippets(DOCS / "authenticator.md"):
        run(code, c)
    assert "carla" in c.AFAuthenticator.linked_identities
