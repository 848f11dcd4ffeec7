"""Configuration checks at hub start: every problem reported with its key path."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from importlib.metadata import EntryPoint
from typing import Any, ClassVar

import pytest
from jupyterhub.crypto import CryptKeeper
from traitlets.config import Config

from afauth.authenticator import AFAuthenticator
from afauth.config import build_config, build_idps
from afauth.identity import Identity
from afauth.idps import PasswordIdP, idp_types
from afcore.issues import Checker, ConfigError
from afcore.options import Option
from afcore.registry import Registry

LOG = logging.getLogger("test")

OIDC = {
    "name": "iam",
    "type": "iam",
    "issuer": "https://iam.example.org/",
    "client_id": "hub",
    "client_secret": "s3cret",
}
LDAP = {
    "name": "fnal",
    "type": "ldap",
    "servers": ["ldaps://ldap.fnal.gov"],
    "bind_dn": "cn=eaf-hub,ou=Services,dc=fnal,dc=gov",
    "bind_password": "pw",
    "user_search_base": "ou=People,dc=fnal,dc=gov",
}


def problems(**over: Any) -> list[str]:
    args: dict[str, Any] = {
        "idps": [OIDC],
        "mapping": [],
        "mappers": [],
        "managed_roles": [],
        "vos": [],
        "linked_identities": {},
        "allow_insecure": False,
        "max_username_length": 48,
        "log": LOG,
    }
    args.update(over)
    try:
        build_config(**args)
    except ConfigError as exc:
        return [str(i) for i in exc.issues]
    return []


def has(found: list[str], path: str, text: str) -> bool:
    return any(p.startswith(f"{path}: ") and text in p for p in found)


def test_valid_config_builds_every_builtin_type() -> None:
    config = build_config(
        idps=[
            OIDC,
            {**OIDC, "name": "cern", "type": "cern", "issuer": None},
            {"name": "uni", "type": "cilogon", "client_id": "c", "allowed_idps": ["urn:x"]},
            {"name": "generic", "type": "oidc", "issuer": "https://idp.example", "client_id": "c"},
            LDAP,
            {"name": "demo", "type": "dev", "allow_any_user": True},
        ],
        mapping=[{"claim": "wlcg.groups", "match": "/(?P<vo>cms)", "vo": "{vo}"}],
        mappers=[{"type": "rules", "rules": []}],
        managed_roles=[{"name": "vo-manager-{vo}", "scopes": ["admin:users!group={vo}"]}],
        vos=["cms", "atlas"],
        linked_identities={"alice": ["iam:abc", "fnal:alice"]},
        allow_insecure=True,
        max_username_length=48,
        log=LOG,
    )
    assert list(config.idps) == ["iam", "cern", "uni", "generic", "fnal", "demo"]
    assert sorted(config.roles) == ["vo-manager-atlas", "vo-manager-cms"]
    assert config.roles["vo-manager-cms"]["scopes"] == ["admin:users!group=cms"]
    assert config.links == {("iam", "abc"): "alice", ("fnal", "alice"): "alice"}
    assert config.idps["cern"].issuer == "https://auth.cern.ch/auth/realms/cern"  # type: ignore[attr-defined]
    assert config.idps["uni"].issuer == "https://cilogon.org"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("idps", "path", "text"),
    [
        ([], "idps", "at least one"),
        ("cern", "idps", "at least one"),
        ([7], "idps[0]", "expected a mapping"),
        ([{"name": "x"}], "idps[0].type", "required"),
        ([{**OIDC, "type": "okta"}], "idps[0].type", "unknown identity provider type 'okta'"),
        ([{**OIDC, "client_id": None}], "idps[0].client_id", "required"),
        ([{**OIDC, "client_secert": "x"}], "idps[0].client_secert", "unknown option"),
        ([{**OIDC, "name": "IAM"}], "idps[0].name", "lower-case"),
        ([OIDC, OIDC], "idps[1].name", "already used by idps[0]"),
        ([{**OIDC, "issuer": "http://iam.example.org"}], "idps[0].issuer", "must use https"),
        ([{**OIDC, "issuer": "not a url"}], "idps[0].issuer", "not a valid URL"),
        ([{**OIDC, "algorithms": ["RS256", "HS256"]}], "idps[0].algorithms[1]", "not allowed"),
        ([{**OIDC, "algorithms": ["none"]}], "idps[0].algorithms[0]", "not allowed"),
        (
            [{**OIDC, "authorize_params": {"state": "x"}}],
            "idps[0].authorize_params.state",
            "set by",
        ),
        ([{**OIDC, "scope": ["profile"]}], "idps[0].scope", "must include 'openid'"),
        ([{**OIDC, "leeway": -1}], "idps[0].leeway", "≥ 0"),
        ([{**OIDC, "userinfo": "yes"}], "idps[0].userinfo", "true or false"),
        (
            [{**OIDC, "client_secret": None, "token_endpoint_auth_method": "client_secret_post"}],
            "idps[0].client_secret",
            "required with client_secret_post",
        ),
        ([{"name": "u", "type": "cilogon", "client_id": "c"}], "idps[0].allowed_idps", "required"),
        (
            [
                {
                    "name": "u",
                    "type": "cilogon",
                    "client_id": "c",
                    "allowed_idps": {"urn:x": {"a": 1}},
                }
            ],
            "idps[0].allowed_idps.urn:x.a",
            "unknown key",
        ),
        (
            [{**LDAP, "servers": ["ldap://ldap.fnal.gov"], "start_tls": False}],
            "idps[0].servers[0]",
            "clear text",
        ),
        ([{**LDAP, "servers": ["https://x"]}], "idps[0].servers", "must use ldap or ldaps"),
        ([{**LDAP, "bind_password": None}], "idps[0].bind_password", "exactly one"),
        ([{**LDAP, "user_filter": "(uid={user})"}], "idps[0].user_filter", "unknown placeholder"),
        ([{**LDAP, "user_filter": "(cn=x)"}], "idps[0].user_filter", "must contain {username}"),
        ([{**LDAP, "user_filter": "(uid={username}"}], "idps[0].user_filter", "parenthesised"),
        ([{**LDAP, "pool_size": 0}], "idps[0].pool_size", "at least 1"),
        ([{**LDAP, "ca_file": "/nonexistent/ca.pem"}], "idps[0].ca_file", "does not exist"),
        (
            [{**OIDC, "client_secret": None, "client_secret_file": "/nonexistent/s"}],
            "idps[0].client_secret_file",
            "does not exist",
        ),
        ([{"name": "demo", "type": "dev", "allow_any_user": True}], "idps[0].type", "insecure"),
        ([{"name": "demo", "type": "dev"}], "idps[0].users", "give demo users"),
    ],
)
def test_idp_problems_have_key_paths(idps: Any, path: str, text: str) -> None:
    found = problems(idps=idps)
    assert has(found, path, text), found


def test_secrets_are_never_echoed_in_messages() -> None:
    found = problems(idps=[{**OIDC, "client_secret": ["not", "a", "string"]}])
    assert found == ["idps[0].client_secret: client_secret must be a non-empty string"]


@pytest.mark.parametrize(
    ("over", "path", "text"),
    [
        ({"mapping": [{"claim": "x", "matc": "y"}]}, "mapping[0].matc", "unknown key"),
        ({"mapping": "rules"}, "mapping", "expected a list"),
        ({"mappers": [{"type": "voms"}]}, "mappers[0].type", "unknown mapper 'voms'"),
        (
            {"mappers": [{"type": "rules", "rules": [{"claim": "x"}]}]},
            "mappers[0].rules[0]",
            "output",
        ),
        ({"mappers": {"type": "rules"}}, "mappers", "expected a list"),
        ({"vos": ["CMS"]}, "vos[0]", "not a valid VO name"),
        ({"managed_roles": [{"name": "x-{vo}"}]}, "managed_roles[0].name", "list the VOs"),
        (
            {"managed_roles": [{"name": "ok", "users": ["a"]}]},
            "managed_roles[0].users",
            "mapping rules",
        ),
        ({"managed_roles": [{"scopes": []}]}, "managed_roles[0].name", "required"),
        ({"managed_roles": [{"name": "Bad"}]}, "managed_roles[0].name", "not a valid role name"),
        ({"managed_roles": [{"name": "r-{x}"}]}, "managed_roles[0]", "only the {vo}"),
        (
            {"managed_roles": [{"name": "ok", "scopes": "read:users"}]},
            "managed_roles[0].scopes",
            "list",
        ),
        ({"managed_roles": [{"name": "abc"}, {"name": "abc"}]}, "managed_roles[1].name", "twice"),
        (
            {"mapping": [{"claim": "x", "role": "vo-admin"}]},
            "mapping",
            "role 'vo-admin' is not in managed_roles",
        ),
        (
            {"linked_identities": {"alice": ["cern:alice"]}},
            "linked_identities.alice[0]",
            "unknown IdP",
        ),
        ({"linked_identities": {"alice": ["iam"]}}, "linked_identities.alice[0]", "idp:subject"),
        ({"linked_identities": {"Alice!": ["iam:x"]}}, "linked_identities.Alice!", "not a valid"),
        ({"linked_identities": {"alice": []}}, "linked_identities.alice", "non-empty list"),
        (
            {"linked_identities": {"alice": ["iam:x"], "bob": ["iam:x"]}},
            "linked_identities.bob[0]",
            "already linked to 'alice'",
        ),
    ],
)
def test_other_problems_have_key_paths(over: dict[str, Any], path: str, text: str) -> None:
    found = problems(**over)
    assert has(found, path, text), found


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        idps=[{**OIDC, "client_id": None}, {**LDAP, "bind_password": None}],
        mapping=[{"claim": "x"}],
        vos=["CMS"],
    )
    assert [p.split(":")[0] for p in found] == [
        "vos[0]",
        "idps[0].client_id",
        "idps[1].bind_password",
        "mapping[0]",
    ]


# -- a site IdP plugin through the registry ------------------------------------------------


class SiteIdP(PasswordIdP):
    type_name: ClassVar[str] = "site"
    options: ClassVar[dict[str, Option]] = {"realm": Option("str", required=True)}

    async def login(self, username: str, password: str) -> Identity:
        return Identity(idp=self.name, subject=username, username=username)


def test_site_idp_plugins_are_loaded_and_validated() -> None:
    ep = EntryPoint("site", f"{__name__}:SiteIdP", "afauth.idps")
    registry = Registry("afauth.idps", "identity provider type", idp_types()._check, eps=[ep])
    b = Checker()
    idps = build_idps(
        [{"name": "x", "type": "site", "realm": "r"}, {"name": "y", "type": "site"}],
        b,
        allow_insecure=False,
        max_username_length=48,
        log=LOG,
        registry=registry,
    )
    assert list(idps) == ["x"] and isinstance(idps["x"], SiteIdP)
    assert [str(i) for i in b.issues] == ["idps[1].realm: required for a site IdP"]
    bad = EntryPoint("bad", "logging:Logger", "afauth.idps")
    registry = Registry("afauth.idps", "identity provider type", idp_types()._check, eps=[bad])
    build_idps([{"name": "z", "type": "bad"}], b, allow_insecure=False, max_username_length=48,
               log=LOG, registry=registry)  # fmt: skip
    assert "is not a valid identity provider type" in str(b.issues[-1])


# -- the authenticator at hub start --------------------------------------------------------


@pytest.fixture
def crypt_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", os.urandom(32).hex())
    CryptKeeper.clear_instance()
    yield
    CryptKeeper.clear_instance()


@pytest.fixture
def no_crypt_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("JUPYTERHUB_CRYPT_KEY", raising=False)
    CryptKeeper.clear_instance()
    yield
    CryptKeeper.clear_instance()


def authenticator(tmp_path: Any, **traits: Any) -> AFAuthenticator:
    traits.setdefault("binding_db", str(tmp_path / "b.sqlite"))
    return AFAuthenticator(config=Config({"AFAuthenticator": traits}))


def test_authenticator_defaults(crypt_key: None, tmp_path: Any) -> None:
    auth = authenticator(tmp_path, idps=[OIDC])
    assert auth.manage_groups and auth.enable_auth_state and auth.refresh_pre_spawn
    assert not auth.manage_roles
    assert auth.check_config() == []
    assert auth.login_url("/hub/") == "/hub/login"
    assert authenticator(tmp_path, idps=[OIDC], managed_roles=[{"name": "abc"}]).manage_roles


def test_auto_login_with_one_oidc_idp_goes_straight_to_it(crypt_key: None, tmp_path: Any) -> None:
    assert (
        authenticator(tmp_path, idps=[OIDC], auto_login=True).login_url("/hub/") == "/hub/login/iam"
    )
    both = authenticator(tmp_path, idps=[OIDC, LDAP], auto_login=True)
    assert both.login_url("/hub/") == "/hub/login"


def test_bad_config_stops_the_hub_with_every_problem(crypt_key: None, tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as info:
        authenticator(tmp_path, idps=[{**OIDC, "client_id": None}], mapping=[{"claim": "x"}])
    text = str(info.value)
    assert "2 error(s)" in text and "idps[0].client_id: required" in text and "mapping[0]" in text


def test_refuses_to_start_without_an_encryption_key(no_crypt_key: None, tmp_path: Any) -> None:
    with pytest.raises(ConfigError) as info:
        authenticator(tmp_path, idps=[OIDC])
    assert "enable_auth_state" in str(info.value) and "JUPYTERHUB_CRYPT_KEY" in str(info.value)
    with pytest.raises(ConfigError):
        authenticator(tmp_path, idps=[OIDC], enable_auth_state=False)


def test_dev_demo_may_run_without_an_encryption_key(no_crypt_key: None, tmp_path: Any) -> None:
    dev = {"name": "demo", "type": "dev", "allow_any_user": True}
    with pytest.raises(ConfigError, match="allow_insecure_dev_idp"):
        authenticator(tmp_path, idps=[dev])
    auth = authenticator(tmp_path, idps=[dev], allow_insecure_dev_idp=True)
    assert not auth.enable_auth_state
    with pytest.raises(ConfigError, match="JUPYTERHUB_CRYPT_KEY"):  # not with a real IdP too
        authenticator(tmp_path, idps=[dev, OIDC], allow_insecure_dev_idp=True)


def test_roles_in_rules_need_manage_roles(crypt_key: None, tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="manage_roles"):
        authenticator(
            tmp_path,
            idps=[OIDC],
            mapping=[{"claim": "x", "role": "abc"}],
            managed_roles=[{"name": "abc"}],
            manage_roles=False,
        )


async def test_load_managed_roles_expands_vos(crypt_key: None, tmp_path: Any) -> None:
    auth = authenticator(
        tmp_path,
        idps=[OIDC],
        vos=["cms", "dune"],
        managed_roles=[
            {
                "name": "vo-manager-{vo}",
                "description": "manage {vo} users",
                "scopes": ["admin:users!group={vo}", "admin:servers!group={vo}"],
            }
        ],
    )
    roles = await auth.load_managed_roles()
    assert roles == [
        {
            "name": "vo-manager-cms",
            "description": "manage cms users",
            "scopes": ["admin:users!group=cms", "admin:servers!group=cms"],
        },
        {
            "name": "vo-manager-dune",
            "description": "manage dune users",
            "scopes": ["admin:users!group=dune", "admin:servers!group=dune"],
        },
    ]


def test_rules_for_unconfigured_idps_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert problems(mapping=[{"idp": ["iam", "fnl"], "group": "x"}]) == []
    assert "mapping[0].idp: 'fnl' is not a configured IdP" in caplog.text


@pytest.mark.parametrize(
    ("db_url", "folder"),
    [
        ("sqlite:////srv/jupyterhub/jupyterhub.sqlite", "/srv/jupyterhub"),
        ("postgresql://hub@db/jupyterhub", None),
        ("sqlite:///:memory:", None),
    ],
)
def test_binding_db_lives_next_to_the_hub_db(
    crypt_key: None, db_url: str, folder: str | None
) -> None:
    from pathlib import Path

    from traitlets import Unicode
    from traitlets.config import Configurable

    class Hub(Configurable):  # stands in for the JupyterHub app
        db_url = Unicode()

    auth = AFAuthenticator(
        parent=Hub(db_url=db_url), config=Config({"AFAuthenticator": {"idps": [OIDC]}})
    )
    expected = Path(folder) if folder else Path.cwd()
    assert auth.binding_db == str(expected / "afauth-bindings.sqlite")


def test_af_entry_point_names_the_authenticator() -> None:
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="jupyterhub.authenticators") if e.name == "af"]
    assert ep.load() is AFAuthenticator
    names = ["cern", "cilogon", "dev", "iam", "ldap", "oauthenticator", "oidc"]
    assert idp_types().names() == names
