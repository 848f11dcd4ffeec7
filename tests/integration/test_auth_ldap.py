"""LDAP sign-in through a MockHub against the real slapd test bed (Fermilab-like tree)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ldap3
import pytest

from afauth.idps.ldap import LDAP
from integration.authhub import AuthHub, auth_hub
from testbed.ldap.fixtures import ldap_testbed, ldap_testbed_factory
from testbed.ldap.pki import write_untrusted_ca
from testbed.ldap.slapd import LDAPTestbed

pytestmark = [pytest.mark.ldap, pytest.mark.hub]

__all__ = ["auth_hub", "ldap_testbed", "ldap_testbed_factory"]

MAPPING: list[dict[str, Any]] = [
    {
        "idp": "fnal",
        "claim": "posix_groups",
        "match": "cms|dune",
        "vo": "{value}",
        "group": "{value}",
    },
    {
        "idp": "fnal",
        "claim": "ldap_groups",
        "value": ["gpu-approved", "eaf-users"],
        "group": "{value}",
    },
    {"idp": "fnal", "claim": "ldap_groups", "value": "eaf-admins", "admin": True},
]


def ldap_idp(*servers: LDAPTestbed, ldaps: bool = False, **over: Any) -> dict[str, Any]:
    tb = servers[0]
    config: dict[str, Any] = {
        "name": "fnal",
        "type": "ldap",
        "display_name": "Fermilab",
        "servers": [s.ldaps_uri if ldaps else s.uri for s in servers],
        "ca_file": str(tb.ca_cert_path),
        "bind_dn": tb.bind_dn,
        "bind_password": tb.bind_password,
        "user_search_base": tb.people_dn,
        "group_search_base": tb.groups_dn,
        "require_groups": ["eaf-users"],
    }
    config.update(over)
    return config


async def ldap_hub(auth_hub: Any, *servers: LDAPTestbed, **over: Any) -> tuple[AuthHub, LDAP]:
    hub: AuthHub = await auth_hub({"idps": [ldap_idp(*servers, **over)], "mapping": MAPPING})
    idp = hub.authenticator.idp("fnal")
    assert isinstance(idp, LDAP)
    return hub, idp


async def login(hub: AuthHub, username: str, password: str, **kw: Any) -> Any:
    return await hub.password_login(hub.browser(), "fnal", username, password, **kw)


def refused(response: Any, status: int, text: str) -> None:
    assert response.status_code == status, (response.status_code, response.text[:2000])
    assert text in response.text, response.text[:3000]
    assert "jupyterhub-hub-login" not in response.cookies


# -- full logins ---------------------------------------------------------------------------------


async def test_posix_user_with_groups_vos_and_ids(auth_hub, ldap_testbed) -> None:
    hub, _ = await ldap_hub(auth_hub, ldap_testbed)
    response = await login(hub, "alice", "alice-password")
    assert response.status_code == 302
    assert hub.groups_of("alice") == ["cms", "eaf-users"]
    assert hub.user("alice").admin is False
    state = await hub.auth_state("alice")
    assert state["idp"] == "fnal" and state["subject"] == "alice" and state["username"] == "alice"
    assert (state["uid"], state["gid"]) == (50001, 5063)
    assert state["supplemental_gids"] == [5064]  # us_cms; cms is the primary group
    assert state["home"] == "/home/alice"
    assert state["vos"] == ["cms"] and state["groups"] == ["cms", "eaf-users"]
    assert state["email"] == "alice@fnal.gov"
    assert state["idp_groups"] == ["cms", "eaf-users", "us_cms"]
    assert state["access_token"] is None and state["expires_at"] is None


async def test_admin_gpu_and_two_experiments(auth_hub, ldap_testbed) -> None:
    hub, _ = await ldap_hub(auth_hub, ldap_testbed)
    assert (await login(hub, "erin", "erin-password")).status_code == 302
    assert hub.user("erin").admin is True
    assert (await login(hub, "dave", "dave-password")).status_code == 302
    assert hub.groups_of("dave") == ["cms", "eaf-users", "gpu-approved"]
    assert (await login(hub, "carol", "carol-pässwörd")).status_code == 302  # UTF-8 password
    assert (await hub.auth_state("carol"))["vos"] == ["cms", "dune"]


async def test_names_that_need_escaping(auth_hub, ldap_testbed) -> None:
    hub, _ = await ldap_hub(auth_hub, ldap_testbed)
    assert (await login(hub, "o'brien", "obrien-password")).status_code == 302
    assert (await hub.auth_state("o-brien"))["subject"] == "o'brien"
    assert (await login(hub, "pat+ops", "patops-password")).status_code == 302
    assert hub.groups_of("pat-ops") == ["dune", "eaf-users"]  # groupOfNames member by DN


async def test_user_without_posix_identity(auth_hub, ldap_testbed) -> None:
    hub, _ = await ldap_hub(auth_hub, ldap_testbed)
    assert (await login(hub, "vera", "vera-password")).status_code == 302
    state = await hub.auth_state("vera")
    assert state["uid"] is None and state["gid"] is None and state["home"] is None
    assert hub.groups_of("vera") == ["eaf-users"]


async def test_next_is_kept_after_a_password_login(auth_hub, ldap_testbed) -> None:
    hub, _ = await ldap_hub(auth_hub, ldap_testbed)
    ok = await login(hub, "bob", "bob-password", next_url="/af/hub/token")
    assert ok.headers["location"] == "/af/hub/token"
    evil = await login(hub, "bob", "bob-password", next_url="//evil.example/")
    assert evil.status_code == 302 and "evil" not in evil.headers["location"]


async def test_scripted_post_to_hub_login_works_with_one_password_idp(
    auth_hub, ldap_testbed
) -> None:
    hub, _ = await ldap_hub(auth_hub, ldap_testbed)
    browser = hub.browser()
    page = await hub.login_page(browser)
    assert 'id="afauth-fnal"' in page.text and "<h2>Fermilab</h2>" in page.text
    xsrf = browser.cookies["_xsrf"]
    response = await browser.post(
        hub.hub_url + "login", data={"_xsrf": xsrf, "username": "bob", "password": "bob-password"}
    )
    assert response.status_code == 302
    assert hub.user("bob").name == "bob"
    other = hub.browser()
    await hub.login_page(other)
    wrong = await other.post(
        hub.hub_url + "login",
        data={"_xsrf": other.cookies["_xsrf"], "username": "carol", "password": "nope"},
    )
    assert wrong.status_code == 403 and "Invalid username or password." in wrong.text
    assert 'id="afauth-fnal"' in wrong.text  # the page again, with the error


async def test_password_post_needs_the_xsrf_token(auth_hub, ldap_testbed) -> None:
    hub, idp = await ldap_hub(auth_hub, ldap_testbed)
    browser = hub.browser()
    await hub.login_page(browser)
    response = await browser.post(
        hub.hub_url + "login/fnal", data={"username": "alice", "password": "alice-password"}
    )
    assert response.status_code == 403 and "jupyterhub-hub-login" not in response.cookies
    stale = await browser.post(
        hub.hub_url + "login",
        data={"_xsrf": "2|stale|token", "username": "alice", "password": "alice-password"},
    )
    assert stale.status_code == 403 and "Login form invalid or expired" in stale.text
    assert idp.stats.user_binds == 0


# -- refusals ------------------------------------------------------------------------------------


async def test_required_group_holds_even_with_allow_all(auth_hub, ldap_testbed) -> None:
    hub, _ = await ldap_hub(auth_hub, ldap_testbed)
    assert hub.authenticator.allow_all  # MockHub's default
    refused(
        await login(hub, "nina", "nina-password"), 403, "not in a group allowed to use this hub"
    )


async def test_wrong_and_empty_passwords(auth_hub, ldap_testbed) -> None:
    hub, idp = await ldap_hub(auth_hub, ldap_testbed)
    refused(await login(hub, "alice", ""), 403, "Enter your password.")
    assert idp.stats.service_connections == 0 and idp.stats.user_binds == 0  # nothing contacted
    refused(await login(hub, "alice", "wrong"), 403, "Invalid username or password.")
    refused(await login(hub, "nobody", "x"), 403, "Invalid username or password.")
    page = await login(hub, "alice", "wrong")
    assert 'value="alice"' in page.text  # the form keeps the name, never the password
    with pytest.raises(KeyError):
        hub.user("alice")


@pytest.mark.parametrize(
    "username",
    ["*)(uid=*", "*", "alice)(|(uid=*", "al*", "alice\\2a", "(uid=alice)", "alice)(objectClass=*"],
)
async def test_filter_injection_is_escaped(auth_hub, ldap_testbed, username: str) -> None:
    hub, _ = await ldap_hub(auth_hub, ldap_testbed)
    refused(await login(hub, username, "alice-password"), 403, "Invalid username or password.")
    assert {u.name for u in hub.app.users.values()} <= {"user"}


@pytest.mark.parametrize(
    ("username", "message"),
    [
        ("\uff41\uff4c\uff49\uff43\uff45", "plain ASCII"),  # full-width "alice"
        ("alice\u200b", "plain ASCII"),
        ("a" * 300, "Invalid username or password."),
    ],
)
async def test_unicode_and_oversized_usernames(auth_hub, ldap_testbed, username, message) -> None:
    hub, _ = await ldap_hub(auth_hub, ldap_testbed)
    refused(await login(hub, username, "alice-password"), 403, message)


# -- transport: TLS, pool, failover, no blocking ---------------------------------------------


async def test_ldaps_with_a_ca_file(auth_hub, ldap_testbed) -> None:
    hub, _ = await ldap_hub(auth_hub, ldap_testbed, ldaps=True)
    assert (await login(hub, "bob", "bob-password")).status_code == 302


async def test_untrusted_certificate_is_refused(auth_hub, ldap_testbed, tmp_path, caplog) -> None:
    ca = write_untrusted_ca(tmp_path / "untrusted.pem")
    hub, _ = await ldap_hub(auth_hub, ldap_testbed, ca_file=str(ca))
    with caplog.at_level(logging.WARNING):
        refused(await login(hub, "bob", "bob-password"), 503, "cannot be reached right now")
    assert "certificate verify failed" in caplog.text.lower() or "certificate" in caplog.text


async def test_service_connections_are_reused(auth_hub, ldap_testbed) -> None:
    hub, idp = await ldap_hub(auth_hub, ldap_testbed, pool_size=2)
    for _ in range(10):
        assert (await login(hub, "bob", "bob-password")).status_code == 302
    assert idp.stats.user_binds == 10
    assert idp.stats.service_connections == 1
    assert idp.stats.service_reuses == 9


async def test_failover_to_the_next_server(auth_hub, ldap_testbed_factory) -> None:
    first, second = ldap_testbed_factory("a"), ldap_testbed_factory("b")
    hub, idp = await ldap_hub(auth_hub, first, second, connect_timeout=2)
    assert (await login(hub, "alice", "alice-password")).status_code == 302
    first.stop()
    assert (await login(hub, "alice", "alice-password")).status_code == 302  # stale pool + down
    assert idp.stats.failovers == 1
    assert (await login(hub, "bob", "bob-password")).status_code == 302
    assert idp.stats.failovers == 1  # the failed server is skipped for retry_after
    second.stop()
    refused(await login(hub, "bob", "bob-password"), 503, "cannot be reached right now")
    first.start()
    assert (await login(hub, "bob", "bob-password")).status_code == 302  # back again


async def test_a_hung_server_never_blocks_the_hub(auth_hub, ldap_testbed_factory) -> None:
    hung, good = ldap_testbed_factory("hung"), ldap_testbed_factory("good")
    hub, idp = await ldap_hub(auth_hub, hung, good, connect_timeout=2, receive_timeout=3)
    browser = hub.browser()
    page = await hub.login_page(browser)
    assert page.status_code == 200
    hung.freeze()  # accepts TCP connections, never answers
    try:
        slow = asyncio.ensure_future(login(hub, "alice", "alice-password"))
        quick = asyncio.ensure_future(browser.get(hub.hub_url + "health"))
        done, _ = await asyncio.wait({slow, quick}, return_when=asyncio.FIRST_COMPLETED)
        assert quick in done and slow not in done  # the hub answered while LDAP hung
        assert (await quick).status_code == 200
        assert (await slow).status_code == 302  # then failed over to the good server
        assert idp.stats.failovers == 1
    finally:
        hung.thaw()


async def test_refresh_rereads_the_directory(auth_hub, ldap_testbed_factory) -> None:
    tb = ldap_testbed_factory("refresh")
    hub, _ = await ldap_hub(auth_hub, tb)
    assert (await login(hub, "bob", "bob-password")).status_code == 302
    assert hub.groups_of("bob") == ["dune", "eaf-users"]
    server = ldap3.Server(tb.host, port=tb.port)
    with ldap3.Connection(server, tb.admin_dn, tb.admin_password, auto_bind=True) as admin:
        admin.modify(
            tb.group_dn("gpu-approved"), {"member": [(ldap3.MODIFY_ADD, [tb.user_dn("bob")])]}
        )
    model = await hub.authenticator.refresh_user(hub.user("bob"))
    assert isinstance(model, dict)
    assert model["groups"] == ["dune", "eaf-users", "gpu-approved"]
    with ldap3.Connection(server, tb.admin_dn, tb.admin_password, auto_bind=True) as admin:
        admin.modify(
            tb.group_dn("eaf-users"), {"member": [(ldap3.MODIFY_DELETE, [tb.user_dn("bob")])]}
        )
    assert await hub.authenticator.refresh_user(hub.user("bob")) is False  # lost access
