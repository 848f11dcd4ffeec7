"""One hub, several IdPs: login page, allow/block rules, the dev IdP, start-up refusals and
log hygiene (no token or password in any log line)."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from jupyterhub.crypto import CryptKeeper
from jupyterhub.tests.mocking import MockHub

from afcore.issues import ConfigError
from integration.authhub import AuthHub, auth_hub, hub_config, start_hub
from integration.test_auth_ldap import MAPPING as LDAP_MAPPING
from integration.test_auth_ldap import ldap_idp
from integration.test_auth_oidc import MAPPING as OIDC_MAPPING
from integration.test_auth_oidc import ROLES, af_config, idp_config
from testbed.ldap.fixtures import ldap_testbed
from testbed.ldap.slapd import LDAPTestbed
from testbed.oidc.fixtures import oidc_testbed
from testbed.oidc.login import LoginError
from testbed.oidc.provider import OIDCTestbed

pytestmark = [pytest.mark.oidc, pytest.mark.ldap, pytest.mark.hub]

__all__ = ["auth_hub", "ldap_testbed", "oidc_testbed"]

DEMO = {"name": "demo", "type": "dev", "users": {"ada": {"groups": ["cms"]}}, "hidden": True}


def everything(oidc: OIDCTestbed, ldap: LDAPTestbed, **over: Any) -> dict[str, Any]:
    config = af_config(
        oidc,
        idps=[idp_config(oidc, "cern"), idp_config(oidc, "iam"), ldap_idp(ldap), DEMO],
        mapping=[*OIDC_MAPPING, *LDAP_MAPPING],
        managed_roles=ROLES,
        allow_insecure_dev_idp=True,
    )
    config.update(over)
    return config


async def test_login_page_with_buttons_and_forms(auth_hub, oidc_testbed, ldap_testbed) -> None:
    hub: AuthHub = await auth_hub(everything(oidc_testbed, ldap_testbed), oidc=oidc_testbed)
    browser = hub.browser()
    page = await hub.login_page(browser)
    assert page.status_code == 200
    text = page.text
    assert text.count('role="button"') == 2  # CERN SSO, INDIGO IAM
    assert text.count('class="afauth-form"') == 1  # Fermilab; the hidden demo form is not shown
    assert "Demo sign-in" not in text
    failed = await hub.password_login(browser, "fnal", "alice", "not-her-password")
    assert failed.status_code == 403
    assert "Invalid username or password." in failed.text
    assert text.count('role="button"') == failed.text.count('role="button"')  # the whole page
    assert (await hub.password_login(browser, "fnal", "alice", "alice-password")).status_code == 302
    assert (await hub.oidc_login(hub.browser(), "cern", "cmsuser")).status_code == 302
    assert (await hub.password_login(hub.browser(), "demo", "ada", "")).status_code == 302
    assert (await hub.auth_state("ada"))["vos"] == []  # no rule maps the demo's groups
    assert hub.groups_of("alice") == ["cms", "eaf-users"]
    assert hub.groups_of("cmsuser") == ["cms"]


async def test_tokens_and_passwords_never_reach_the_logs(
    auth_hub, oidc_testbed, ldap_testbed, caplog, capfd
) -> None:
    secrets: list[str] = ["alice-password", "cmsuser-pw", "bad-pw-0x5eed"]
    config = everything(oidc_testbed, ldap_testbed, refresh_margin=10**6)
    with caplog.at_level(logging.DEBUG):
        hub: AuthHub = await auth_hub(config, oidc=oidc_testbed)
        await hub.password_login(hub.browser(), "fnal", "alice", "bad-pw-0x5eed")
        await hub.password_login(hub.browser(), "fnal", "alice", "alice-password")
        browser = hub.browser()
        authorize = await hub.start(browser, "iam")
        asked = parse_qs(urlsplit(authorize).query)  # logged by the hub's redirect line
        secrets += [asked["nonce"][0], asked["state"][0], asked["code_challenge"][0]]
        callback = await hub.authorize(browser, authorize, "cmsuser", "cmsuser-pw")
        secrets.append(parse_qs(urlsplit(callback).query)["code"][0])
        assert (await hub.callback(browser, callback)).status_code == 302
        state = await hub.auth_state("cmsuser")
        secrets += [state["access_token"], state["refresh_token"], state["id_token"]]
        refreshed = await hub.authenticator.refresh_user(hub.user("cmsuser"))
        assert isinstance(refreshed, dict)
        fresh = refreshed["auth_state"]
        secrets += [fresh["access_token"], fresh["refresh_token"], fresh["id_token"]]
        with pytest.raises(LoginError):  # refused by the IdP itself
            await hub.oidc_login(hub.browser(), "iam", "cmsuser", "wrong-pw")
        await browser.get(hub.hub_url + "logout")
    out, err = capfd.readouterr()
    # the hub's records (httpx/httpcore are the test's own browser logging its requests)
    records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    texts = [out, err]
    texts += [logging.Formatter().format(r) for r in records]
    texts += [str(r.exc_info[1]) for r in records if r.exc_info]
    assert len(records) > 50  # the hub really logged (DEBUG)
    assert any("nonce=[secret]" in t for t in texts)  # the redirect line, scrubbed
    for secret in secrets:
        assert len(secret) > 8
        leaked = [t for t in texts if secret in t]
        assert not leaked, f"secret ...{secret[-6:]} found in logs"


# -- allow / block -------------------------------------------------------------------------------


async def test_allowed_vos_groups_and_idps(auth_hub, oidc_testbed) -> None:
    config = af_config(
        oidc_testbed,
        "cern",
        "iam",
        allowed_vos={"cms"},
        allowed_groups={"atlas"},
        allowed_idps={"cern"},
    )
    hub: AuthHub = await auth_hub(config, oidc=oidc_testbed, Authenticator={"allow_all": False})
    assert (await hub.oidc_login(hub.browser(), "iam", "cmsuser")).status_code == 302  # VO cms
    assert (await hub.oidc_login(hub.browser(), "iam", "atlasuser")).status_code == 302  # group
    assert (await hub.oidc_login(hub.browser(), "cern", "afadmin")).status_code == 302  # IdP
    refused = await hub.oidc_login(hub.browser(), "iam", "duneuser")
    assert refused.status_code == 403 and "not allowed to use this hub" in refused.text


async def test_blocks_hold_even_with_allow_all(auth_hub, oidc_testbed) -> None:
    config = af_config(
        oidc_testbed, blocked_vos={"atlas"}, blocked_idps={"cilogon"}, blocked_groups={"dune"}
    )
    hub: AuthHub = await auth_hub(config, oidc=oidc_testbed)
    assert hub.authenticator.allow_all
    vo = await hub.oidc_login(hub.browser(), "iam", "multiuser")
    assert vo.status_code == 403 and "members of VO atlas are blocked" in vo.text
    idp = await hub.oidc_login(hub.browser(), "cilogon", "cmsuser")
    assert idp.status_code == 403 and "identity provider is disabled" in idp.text
    group = await hub.oidc_login(hub.browser(), "cern", "duneuser")
    assert group.status_code == 403 and "members of dune are blocked" in group.text
    assert (await hub.oidc_login(hub.browser(), "iam", "cmsuser")).status_code == 302
    hub.authenticator.blocked_vos = {"cms"}  # e.g. the VO lost its allocation
    assert await hub.authenticator.refresh_user(hub.user("cmsuser")) is False


async def test_blocked_users_still_apply(auth_hub, oidc_testbed) -> None:
    hub: AuthHub = await auth_hub(
        af_config(oidc_testbed, "cern"),
        oidc=oidc_testbed,
        Authenticator={"blocked_users": {"cmsuser"}},
    )
    response = await hub.oidc_login(hub.browser(), "cern", "cmsuser")
    assert response.status_code == 403


# -- dev IdP and start-up ------------------------------------------------------------------------


async def test_dev_demo_without_an_encryption_key(auth_hub) -> None:
    config = {
        "idps": [{**DEMO, "hidden": False}],
        "allow_insecure_dev_idp": True,
        "mapping": [
            {
                "idp": "demo",
                "claim": "groups",
                "match": "(?P<vo>cms)",
                "vo": "{vo}",
                "group": "{vo}",
            }
        ],
    }
    hub: AuthHub = await auth_hub(config, CryptKeeper={"keys": []})
    assert hub.authenticator.enable_auth_state is False
    page = await hub.login_page(hub.browser())
    assert "Demo sign-in (insecure)" in page.text
    assert (await hub.password_login(hub.browser(), "demo", "ada", "anything")).status_code == 302
    assert hub.groups_of("ada") == ["cms"]
    assert await hub.user("ada").get_auth_state() is None
    unknown = await hub.password_login(hub.browser(), "demo", "mallory", "x")
    assert unknown.status_code == 403 and "Unknown demo user." in unknown.text


async def test_hub_refuses_to_start_without_an_encryption_key(oidc_testbed, tmp_path) -> None:
    config = hub_config(
        {"idps": [idp_config(oidc_testbed, "cern")], "binding_db": str(tmp_path / "b.sqlite")},
        tmp_path,
        CryptKeeper={"keys": []},
    )
    try:
        with pytest.raises(ConfigError) as info:
            await start_hub(config, None)
    finally:
        MockHub.clear_instance()
        CryptKeeper.clear_instance()
    assert "enable_auth_state" in str(info.value) and "JUPYTERHUB_CRYPT_KEY" in str(info.value)


async def test_hub_refuses_to_start_with_a_bad_idp_list(oidc_testbed, tmp_path) -> None:
    bad = [idp_config(oidc_testbed, "cern"), {**idp_config(oidc_testbed, "iam"), "client_id": None}]
    config = hub_config({"idps": bad, "binding_db": str(tmp_path / "b.sqlite")}, tmp_path)
    try:
        with pytest.raises(ConfigError, match=r"idps\[1\]\.client_id: required"):
            await start_hub(config, None)
    finally:
        MockHub.clear_instance()
        CryptKeeper.clear_instance()
