"""Kerberos tickets for LDAP password logins (issue 11, part 3), against real peers: the MIT KDC
test bed (realm AF.TEST, tests/testbed/krb5), slapd (tests/testbed/ldap) and a MockHub running
AFAuthenticator + AFSpawner with the local backend (a real ``jupyterhub-singleuser``).

The real ``klist`` reads the credential cache the server was given (``$KRB5CCNAME`` read from the
server process's own environment).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
import yaml
from jupyterhub.tests.utils import auth_header
from jupyterhub.utils import url_path_join

from afauth.errors import AuthFailure
from afauth.idps.ldap import LDAP
from afauth.kerberos import KerberosSettings, Kinit, ticket_state
from afauth.krb5cache import parse_ccache
from integration.authhub import AuthHub, auth_hub
from integration.spawnkit import (
    facility,
    kube_http,
    make_user,
    new_namespace,
    request_spawn,
    spawn_result,
    stop_server,
)
from integration.test_auth_ldap import MAPPING, ldap_idp
from integration.test_token_renewal import stop_everything, wait_until
from testbed.krb5.fixtures import krb5_testbed, krb5_testbed_factory
from testbed.krb5.kdc import KDCTestbed
from testbed.ldap.fixtures import ldap_testbed
from testbed.ldap.slapd import LDAPTestbed

pytestmark = [pytest.mark.ldap, pytest.mark.hub]

__all__ = ["auth_hub", "krb5_testbed", "krb5_testbed_factory", "ldap_testbed"]

FACILITY = {
    "site": {"name": "kerberos test"},
    "vos": {
        "cms": {"quota": {"cpu": 8, "memory": "16Gi", "servers": 4}},
        "dune": {"quota": {"cpu": 8, "memory": "16Gi", "servers": 4}},
    },
    "flavors": [{"name": "nb", "image": "local", "cpu": 1, "memory": "1Gi", "default": True}],
}
PASSWORDS = ("alice-password", "erin-password", "erin-kerberos-password", "bob-password")


def krb_section(kdc: KDCTestbed, **over: Any) -> dict[str, Any]:
    return {"realm": kdc.realm, "kdc": [kdc.kdc], "lifetime": "10h", "renew_lifetime": "7d", **over}


async def kerberos_hub(
    auth_hub: Any, ldap: LDAPTestbed, kdc: KDCTestbed, tmp_path: Path, **krb: Any
) -> AuthHub:
    facility = tmp_path / "facility.yaml"
    facility.write_text(yaml.safe_dump(FACILITY))
    idps = [
        ldap_idp(ldap, kerberos=krb_section(kdc, **krb)),
        ldap_idp(ldap, name="fnalreq", kerberos=krb_section(kdc, required=True, **krb)),
    ]
    hub: AuthHub = await auth_hub(
        {"idps": idps, "mapping": MAPPING, "refresh_margin": 10, "refresh_interval": 0.5},
        JupyterHub={"spawner_class": "af"},
        AFSpawner={
            "facility_file": str(facility),
            "backend": "local",
            "backend_options": {"root_dir": str(tmp_path / "servers"), "run_as_hub_user": True},
            "cmd": [str(Path(sys.executable).parent / "jupyterhub-singleuser")],
            "args": ["--allow-root"] if os.geteuid() == 0 else [],
            "start_timeout": 60,
            "http_timeout": 30,
        },
    )
    return hub


async def start_and_find_ccache(hub: AuthHub, name: str) -> Path:
    """Start ``name``'s server; the credential cache its process was given ($KRB5CCNAME)."""
    url = url_path_join(hub.app.hub.url, "api/users", name, "server")
    async with httpx.AsyncClient(timeout=120, trust_env=False) as client:
        r = await client.post(url, json={}, headers=auth_header(hub.app.db, name))
    assert r.status_code in (201, 202), r.text
    spawner = hub.user(name).spawners[""]
    if spawner._spawn_future is not None:
        await spawner._spawn_future
    assert spawner.ready
    pid = hub.user(name).spawners[""]._state["pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    env = dict(e.decode().split("=", 1) for e in environ if b"=" in e)
    assert env["KRB5CCNAME"].startswith("FILE:")
    return Path(env["KRB5CCNAME"].removeprefix("FILE:"))


def klist_time(t: float) -> str:
    """``t`` as klist prints it (local time, ``MM/DD/YY HH:MM:SS``)."""
    return time.strftime("%m/%d/%y %H:%M:%S", time.localtime(t))


def expiry(klist_text: str) -> str:
    """The "Expires" column of the krbtgt line of ``klist``."""
    line = next(ln for ln in klist_text.splitlines() if "krbtgt/" in ln)
    return " ".join(line.split()[2:4])


@pytest.mark.skipif(os.geteuid() != 0, reason="the ccache belongs to the user's uid: needs root")
async def test_ldap_login_gives_the_server_a_renewable_ticket(
    auth_hub: Any,
    ldap_testbed: LDAPTestbed,
    krb5_testbed: KDCTestbed,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    hub = await kerberos_hub(auth_hub, ldap_testbed, krb5_testbed, tmp_path)
    try:
        began = time.time()
        response = await hub.password_login(hub.browser(), "fnal", "alice", "alice-password")
        assert response.status_code == 302, response.text[:2000]
        krb = (await hub.auth_state("alice"))["kerberos"]
        assert krb["principal"] == "alice@AF.TEST" and krb["error"] is None
        # the KDC's realm caps the 10h asked for at its max_life (1h); renewable for a day
        assert began - 2 <= krb["starts_at"] and krb["expires_at"] <= began + 3600 + 2
        assert krb["renew_until"] > krb["expires_at"] + 3600
        ccache = await start_and_find_ccache(hub, "alice")
        st = ccache.stat()
        assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 50001, 5063)
        listed = krb5_testbed.klist(ccache)
        assert listed.returncode == 0, listed.stderr
        assert "Default principal: alice@AF.TEST" in listed.stdout
        assert "krbtgt/AF.TEST@AF.TEST" in listed.stdout and "renew until" in listed.stdout
        flags = re.search(r"Flags: (\w+)", listed.stdout)
        assert flags and "R" in flags.group(1), listed.stdout  # renewable
        # the hub kept no file behind, and the password is in no log line
        assert not list(Path("/tmp").glob("afauth-krb5-*/ccache"))
        assert "Kerberos ticket for alice@AF.TEST until" in caplog.text
        for secret in PASSWORDS:
            assert secret not in caplog.text
        assert krb["ccache"] not in caplog.text
    finally:
        await stop_everything(hub)


async def test_wrong_kerberos_password_follows_the_site_choice(
    auth_hub: Any,
    ldap_testbed: LDAPTestbed,
    krb5_testbed: KDCTestbed,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """erin's LDAP password is not her Kerberos password: the LDAP bind succeeds, kinit fails."""
    caplog.set_level(logging.DEBUG)
    hub = await kerberos_hub(auth_hub, ldap_testbed, krb5_testbed, tmp_path)
    # required: the login is refused and says why
    page = await hub.password_login(hub.browser(), "fnalreq", "erin", "erin-password")
    assert page.status_code == 403, page.text[:2000]
    assert "Kerberos ticket could not be obtained (the KDC refused the password)" in page.text
    assert "jupyterhub-hub-login" not in page.cookies
    # not required: signed in, without a ticket, and the log says what happened
    response = await hub.password_login(hub.browser(), "fnal", "erin", "erin-password")
    assert response.status_code == 302, response.text[:2000]
    krb = (await hub.auth_state("erin"))["kerberos"]
    assert krb["ccache"] is None and krb["principal"] == "erin@AF.TEST"
    assert krb["error"] == "No Kerberos ticket: the KDC refused the password."
    assert "no Kerberos ticket for erin@AF.TEST: the KDC refused the password" in caplog.text
    # a person without a principal (vera) signs in the same way
    response = await hub.password_login(hub.browser(), "fnal", "vera", "vera-password")
    assert response.status_code == 302
    vera = (await hub.auth_state("vera"))["kerberos"]
    assert vera["error"] == "No Kerberos ticket: the principal is not in the Kerberos database."
    for secret in (*PASSWORDS, "vera-password"):
        assert secret not in caplog.text


async def test_kdc_down(
    ldap_testbed: LDAPTestbed,
    krb5_testbed_factory: Any,
) -> None:
    kdc: KDCTestbed = krb5_testbed_factory("down")
    kdc.stop()
    config = ldap_idp(ldap_testbed, kerberos=krb_section(kdc, timeout=5))
    optional = LDAP(config)
    required = LDAP({**config, "kerberos": krb_section(kdc, timeout=5, required=True)})
    try:
        identity = await optional.login("bob", "bob-password")
        assert identity.username == "bob" and identity.kerberos is not None
        assert identity.kerberos["error"] == "No Kerberos ticket: the KDC could not be reached."
        with pytest.raises(AuthFailure) as err:
            await required.login("bob", "bob-password")
        assert err.value.status == 503 and "could not be reached" in err.value.message
        kdc.start()  # back: tickets again
        again = await required.login("bob", "bob-password")
        assert again.kerberos is not None and again.kerberos["principal"] == "bob@AF.TEST"
    finally:
        await optional.close()
        await required.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the ccache belongs to the user's uid: needs root")
async def test_refresher_renews_the_ticket_then_stops_and_tells_the_user(
    auth_hub: Any,
    ldap_testbed: LDAPTestbed,
    krb5_testbed: KDCTestbed,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """30 s tickets renewable for 50 s, a 10 s margin: the hub's refresher renews the ticket
    (the user never visits) 10 s before it expires, to the end of its renewable lifetime; when
    that is reached it stops and the next visit is told to sign in again."""
    caplog.set_level(logging.INFO)
    hub = await kerberos_hub(
        auth_hub, ldap_testbed, krb5_testbed, tmp_path, lifetime="30s", renew_lifetime="50s"
    )
    try:
        browser = hub.browser()
        signed_in = time.time()
        response = await hub.password_login(browser, "fnal", "dave", "dave-password")
        assert response.status_code == 302, response.text[:2000]
        first = (await hub.auth_state("dave"))["kerberos"]
        assert first["expires_at"] - first["starts_at"] == 30
        assert first["renew_until"] - first["starts_at"] == 50
        ccache = await start_and_find_ccache(hub, "dave")
        listed = krb5_testbed.klist(ccache)
        assert expiry(listed.stdout) == klist_time(first["expires_at"]), listed.stdout
        # nobody visits: the refresher renews before the ticket expires
        seen: list[float] = []

        def renewed() -> bool:
            if expiry(krb5_testbed.klist(ccache).stdout) != klist_time(first["expires_at"]):
                seen.append(time.time())
            return bool(seen)

        await wait_until(renewed, first["expires_at"] + 2)
        assert seen and seen[0] < first["expires_at"], "not renewed before it expired"
        second = (await hub.auth_state("dave"))["kerberos"]
        assert second["expires_at"] > first["expires_at"]
        assert second["expires_at"] == first["renew_until"]  # capped by the renewable lifetime
        after = krb5_testbed.klist(ccache)
        assert after.returncode == 0 and "Default principal: dave@AF.TEST" in after.stdout
        assert expiry(after.stdout) == klist_time(second["expires_at"])
        assert ccache.stat().st_mode & 0o777 == 0o600 and ccache.stat().st_uid == 50004
        # the end of the renewable lifetime: no more renewals, the session is flagged
        await wait_until(
            lambda: "cannot be renewed any more" in caplog.text, first["renew_until"] + 5
        )
        state = await hub.auth_state("dave")
        assert state["signed_out"].startswith("Your Kerberos ticket end")
        assert "Sign in again to get a new one." in state["signed_out"]
        assert state["kerberos"]["expires_at"] == first["renew_until"]
        home = await browser.get(hub.hub_url + "home")
        assert home.status_code == 302 and "/hub/login" in home.headers["location"]
        page = await browser.get(urljoin(str(home.url), home.headers["location"]))
        assert "Your Kerberos ticket end" in page.text
        # signing in again gives a new ticket, which the server gets at its next poll
        again = await hub.password_login(browser, "fnal", "dave", "dave-password")
        assert again.status_code == 302
        fresh = await hub.auth_state("dave")
        assert "signed_out" not in fresh
        assert fresh["kerberos"]["renew_until"] > first["renew_until"]
        assert await hub.user("dave").spawners[""].poll() is None
        newest = krb5_testbed.klist(ccache).stdout
        assert expiry(newest) == klist_time(fresh["kerberos"]["expires_at"])
        refresher = hub.authenticator.refresher
        assert refresher is not None
        print(  # the Kerberos round trip, for the docs
            f"\nkerberos timeline: ticket 30s renewable 50s; renewed "
            f"{seen[0] - signed_in:.1f}s after sign-in, {first['expires_at'] - seen[0]:.1f}s "
            f"before expiry; refresher outcomes {refresher.counts}"
        )
        for secret in PASSWORDS:
            assert secret not in caplog.text
    finally:
        await stop_everything(hub)


# -- Kubernetes: the credential cache in its own Secret -------------------------------------------


async def _krb5_secret(cluster: Any, ns: str, name: str) -> bytes | None:
    async with kube_http(cluster) as k:
        r = await k.get(f"/api/v1/namespaces/{ns}/secrets/{name}")
    if r.status_code == 404:
        return None
    return base64.b64decode(r.json()["data"]["krb5cc"])


@pytest.mark.k8s
async def test_kubernetes_ccache_secret_follows_auth_state(
    af_hub: Any, k8s_cluster: Any, pod_stub: Any, krb5_testbed: KDCTestbed
) -> None:
    kinit = Kinit(KerberosSettings(realm=krb5_testbed.realm, kdc=(krb5_testbed.kdc,)))
    ccache = await kinit.obtain("bob@AF.TEST", "bob-password")
    ns = await new_namespace(k8s_cluster)
    app = await af_hub(
        facility(),
        spawner={"backend_options": {"kubeconfig": str(k8s_cluster.kubeconfig), "namespace": ns}},
    )
    ticket = ticket_state(parse_ccache(ccache), ccache)
    state = {"uid": 50002, "gid": 9010, "vos": ["cms"], "kerberos": ticket}
    user = await make_user(app, "kbob", auth_state=state)
    try:
        r = await request_spawn(app, "kbob", {"flavor": "cms-el9"})
        assert r.status_code in (201, 202), r.text
        await spawn_result(app, "kbob")
        assert await _krb5_secret(k8s_cluster, ns, "jupyter-kbob-krb5") == ccache
        async with kube_http(k8s_cluster) as k:
            pod = (await k.get(f"/api/v1/namespaces/{ns}/pods/jupyter-kbob")).json()
        [c] = pod["spec"]["containers"]
        assert {"name": "KRB5CCNAME", "value": "FILE:/etc/af-krb5/krb5cc"} in c["env"]
        assert "BEARER_TOKEN_FILE" not in str(c["env"])  # an LDAP login: no OIDC token
        assert ticket["ccache"] not in str(pod)
        # the hub renewed the ticket: the next poll rewrites the Secret
        await asyncio.sleep(1.1)
        renewed = await kinit.renew(ccache)
        assert parse_ccache(renewed).expires_at > parse_ccache(ccache).expires_at
        new_state = {**state, "kerberos": ticket_state(parse_ccache(renewed), renewed)}
        await user.save_auth_state(new_state)
        spawner = user.spawners[""]
        assert await spawner.poll() is None
        assert await _krb5_secret(k8s_cluster, ns, "jupyter-kbob-krb5") == renewed
        # no ticket any more (it expired): the Secret's value is emptied, not left stale
        await spawner.auth_state_updated({**state, "kerberos": {**ticket, "ccache": None}})
        assert await _krb5_secret(k8s_cluster, ns, "jupyter-kbob-krb5") == b""
        await stop_server(app, "kbob")
        assert await _krb5_secret(k8s_cluster, ns, "jupyter-kbob-krb5") is None
    finally:
        kinit.close()
