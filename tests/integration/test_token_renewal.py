"""Fresh tokens for running servers whether or not the user visits the hub (issue 11, part 1).

A real hub (MockHub, real proxy) running AFAuthenticator + AFSpawner with the local backend (a
real ``jupyterhub-singleuser`` process), the node oidc-provider IAM-like issuer handing out
20-second access tokens. The user signs in, starts a server and never comes back: the hub's
token refresher renews the token (refresh-token grant, rotation kept) and rewrites the server's
``$BEARER_TOKEN_FILE`` before the old token expires. When the IdP revokes the grant, the token
file is removed and the next visit lands on the login page with the reason.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
import yaml
from jupyterhub.tests.utils import auth_header
from jupyterhub.utils import url_path_join

from afspawner.backends.base import LaunchRequest
from afspawner.backends.local import LocalBackend, LocalSettings
from afspawner.plan import LaunchPlan, UserIdentity
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
from integration.test_auth_oidc import af_config, userinfo_status
from testbed.k8s import KubeCluster
from testbed.oidc.fixtures import oidc_testbed
from testbed.oidc.provider import OIDCTestbed
from testbed.podstub import PodStub

pytestmark = [pytest.mark.hub]

__all__ = ["auth_hub", "oidc_testbed"]

TTL = 20  # seconds an access token lives
MARGIN = 10  # the refresher renews when less than this is left
FACILITY = {
    "site": {"name": "renewal test"},
    "vos": {"cms": {"quota": {"cpu": 8, "memory": "16Gi", "servers": 4}}},
    "flavors": [{"name": "nb", "image": "local", "cpu": 1, "memory": "1Gi", "default": True}],
}


@pytest.fixture
async def short_tokens(oidc_testbed: OIDCTestbed) -> AsyncIterator[OIDCTestbed]:
    old = dict(oidc_testbed["iam"].ttl)
    oidc_testbed.set_ttl("iam", access_token=TTL)
    yield oidc_testbed
    oidc_testbed.set_ttl("iam", access_token=old["access_token"])


async def hub_with_servers(auth_hub: Any, tb: OIDCTestbed, tmp_path: Path) -> AuthHub:
    facility = tmp_path / "facility.yaml"
    facility.write_text(yaml.safe_dump(FACILITY))
    config = af_config(tb, "iam", refresh_margin=MARGIN, refresh_interval=0.5, refresh_batch=10)
    hub: AuthHub = await auth_hub(
        config,
        oidc=tb,
        JupyterHub={"spawner_class": "af"},
        AFSpawner={
            "facility_file": str(facility),
            "backend": "local",
            "backend_options": {"root_dir": str(tmp_path / "servers"), "run_as_hub_user": True},
            "cmd": [str(Path(sys.executable).parent / "jupyterhub-singleuser")],
            "args": ["--allow-root"] if os.geteuid() == 0 else [],
            "uid_sources": ["pool"],
            "uid_pool_file": str(tmp_path / "pool.json"),
            "uid_pool_range": [61000, 61099],
            "start_timeout": 60,
            "http_timeout": 30,
        },
    )
    return hub


async def start_server(hub: AuthHub, name: str) -> Path:
    """Start ``name``'s default server through the REST API; its token file."""
    url = url_path_join(hub.app.hub.url, "api/users", name, "server")
    async with httpx.AsyncClient(timeout=120, trust_env=False) as client:
        r = await client.post(url, json={}, headers=auth_header(hub.app.db, name))
    assert r.status_code in (201, 202), r.text
    spawner = hub.user(name).spawners[""]
    if spawner._spawn_future is not None:
        await spawner._spawn_future
    assert spawner.ready
    return Path(spawner._state["token_file"])


async def stop_everything(hub: AuthHub) -> None:
    refresher = hub.authenticator.refresher
    if refresher is not None:
        await refresher.stop()
    for user in list(hub.app.users.values()):
        for name, spawner in list(user.spawners.items()):
            if spawner.active:
                await user.stop(name)


async def wait_until(done: Callable[[], bool], deadline: float) -> None:
    """Until ``done()`` or the Unix time ``deadline``, checking every 0.1 s."""
    for _ in range(int(max(0.0, deadline - time.time()) * 10) + 1):
        if done() or time.time() >= deadline:
            return
        await asyncio.sleep(0.1)


def person(tb: OIDCTestbed, name: str) -> None:
    tb.set_user(
        "iam",
        name,
        password=f"{name}-pw",
        claims={"preferred_username": name, "wlcg.groups": ["/cms"]},
    )


@pytest.mark.oidc
async def test_running_server_gets_a_fresh_token_without_a_visit(
    auth_hub: Any, short_tokens: OIDCTestbed, tmp_path: Path
) -> None:
    tb = short_tokens
    person(tb, "overnight")
    hub = await hub_with_servers(auth_hub, tb, tmp_path)
    try:
        signed_in = time.time()
        assert (await hub.oidc_login(hub.browser(), "iam", "overnight")).status_code == 302
        token_file = await start_server(hub, "overnight")
        first = await hub.auth_state("overnight")
        assert token_file.read_text() == first["access_token"]
        assert first["expires_at"] - signed_in <= TTL + 1
        # nobody visits the hub from now on: only the refresher acts
        seen: list[tuple[float, str]] = []
        deadline = first["expires_at"] + 5
        while time.time() < deadline:
            text = token_file.read_text() if token_file.exists() else ""
            if text and text != first["access_token"]:
                seen.append((time.time(), text))
                break
            await asyncio.sleep(0.1)
        assert seen, "the token file was not rewritten"
        renewed_at, new_token = seen[0]
        assert renewed_at < first["expires_at"], "renewed only after the old token expired"
        state = await hub.auth_state("overnight")
        assert state["access_token"] == new_token
        assert state["refresh_token"] != first["refresh_token"]  # rotation kept
        assert state["expires_at"] > first["expires_at"]
        assert await userinfo_status(tb, "iam", new_token) == 200
        # and again: the second token is replaced before it expires too
        second_exp = state["expires_at"]
        await wait_until(lambda: token_file.read_text() != new_token, second_exp)
        third = token_file.read_text()
        assert third not in (new_token, first["access_token"]) and time.time() < second_exp
        await asyncio.sleep(max(0.0, first["expires_at"] + 1 - time.time()))
        assert await userinfo_status(tb, "iam", first["access_token"]) == 401
        assert await userinfo_status(tb, "iam", third) == 200
        print(  # the timeline, for docs/credentials.md
            f"\ntimeline: lifetime {first['expires_at'] - signed_in:.1f}s; "
            f"first renewal {renewed_at - signed_in:.1f}s after sign-in, "
            f"{first['expires_at'] - renewed_at:.1f}s before expiry; "
            f"renewals so far {hub.authenticator.refresher.counts}"  # type: ignore[union-attr]
        )
    finally:
        await stop_everything(hub)


@pytest.mark.oidc
async def test_revoked_grant_removes_the_token_and_the_next_visit_says_why(
    auth_hub: Any, short_tokens: OIDCTestbed, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tb = short_tokens
    person(tb, "suspended2")
    hub = await hub_with_servers(auth_hub, tb, tmp_path)
    try:
        browser = hub.browser()
        assert (await hub.oidc_login(browser, "iam", "suspended2")).status_code == 302
        token_file = await start_server(hub, "suspended2")
        first = await hub.auth_state("suspended2")
        assert token_file.read_text() == first["access_token"]
        assert tb.revoke_grants("iam", "suspended2") >= 1
        with caplog.at_level(logging.WARNING):
            await wait_until(lambda: not token_file.exists(), first["expires_at"] + 5)
            assert not token_file.exists(), "the token file was not removed"
            state = await hub.auth_state("suspended2")
            assert state["access_token"] is None and state["refresh_token"] is None
            assert state["signed_out"].startswith("Your servers' tokens were removed.")
            assert hub.user("suspended2").spawners[""].ready  # the server itself keeps running
            # the next visit: to the login page, which says why
            home = await browser.get(hub.hub_url + "home")
            assert home.status_code == 302 and "/hub/login" in home.headers["location"]
            page = await browser.get(urljoin(str(home.url), home.headers["location"]))
            assert page.status_code == 200
            assert "Your servers&#x27; tokens were removed." in page.text
            assert "refused the session renewal" in page.text
        assert "_token_authenticated" not in caplog.text  # JupyterHub 6.1.1's traceback avoided
        assert "Failed to get current user" not in caplog.text
        # signing in again: the server gets the new token at JupyterHub's next poll
        assert (await hub.oidc_login(browser, "iam", "suspended2")).status_code == 302
        again = await hub.auth_state("suspended2")
        assert "signed_out" not in again and again["access_token"]
        assert await hub.user("suspended2").spawners[""].poll() is None
        assert token_file.read_text() == again["access_token"]
    finally:
        await stop_everything(hub)


@pytest.mark.oidc
async def test_idp_outage_backs_off_and_renews_once_the_idp_answers(
    auth_hub: Any, short_tokens: OIDCTestbed, tmp_path: Path
) -> None:
    tb = short_tokens
    person(tb, "patient")
    hub = await hub_with_servers(auth_hub, tb, tmp_path)
    try:
        assert (await hub.oidc_login(hub.browser(), "iam", "patient")).status_code == 302
        token_file = await start_server(hub, "patient")
        first = await hub.auth_state("patient")
        idp = hub.authenticator.idp("iam")
        refresher = hub.authenticator.refresher
        assert idp is not None and refresher is not None
        real = dict(idp._discovery)  # type: ignore[attr-defined]
        # the token endpoint stops answering (connection refused) before the renewal is due
        idp._discovery = {**real, "token_endpoint": "http://127.0.0.1:9/token"}  # type: ignore[attr-defined]
        await wait_until(lambda: refresher.counts.get("outage", 0) >= 2, first["expires_at"])
        assert refresher.counts.get("outage", 0) >= 2
        assert refresher.schedule.attempts("patient") >= 2  # backing off
        assert token_file.read_text() == first["access_token"]  # the servers keep theirs
        assert (await hub.auth_state("patient"))["refresh_token"] == first["refresh_token"]
        idp._discovery = real  # type: ignore[attr-defined]
        await wait_until(
            lambda: token_file.read_text() != first["access_token"], first["expires_at"] + 5
        )
        state = await hub.auth_state("patient")
        assert token_file.read_text() == state["access_token"] != first["access_token"]
        assert refresher.schedule.attempts("patient") == 0
        assert await userinfo_status(tb, "iam", state["access_token"]) == 200
    finally:
        await stop_everything(hub)


# -- small items of issue 11 ---------------------------------------------------------------------


@pytest.mark.oidc
async def test_refusal_pages_show_the_message_once(
    auth_hub: Any, oidc_testbed: OIDCTestbed
) -> None:
    hub: AuthHub = await auth_hub(af_config(oidc_testbed, "iam"), oidc=oidc_testbed)
    browser = hub.browser()
    page = await browser.get(hub.hub_url + "login/iam/callback", params={"code": "x", "state": "y"})
    message = "Please start again from the login page."
    assert page.status_code == 400
    assert page.text.count(message) == 1, page.text[:3000]
    assert "400 : Bad Request" in page.text


# -- the spawner side: the hook and the backends' "remove" ---------------------------------------


async def test_local_token_file_is_removed_and_comes_back(tmp_path: Path) -> None:
    backend = LocalBackend(LocalSettings(tmp_path, run_as_hub_user=True))
    ident = UserIdentity("tina", 50010, 5063)
    plan = LaunchPlan("tina", "", None, "f", "local", 1000, 2**30, None, None, ident)
    script = [sys.executable, "-c", "import time; time.sleep(60)"]
    req = LaunchRequest(plan, script, [], {}, 0, 30, bearer_token="tok-1")
    started = await backend.launch(req, lambda m: None)
    try:
        path = Path(started.state["token_file"])
        assert path.read_text() == "tok-1"
        await backend.update_token(started.state, "")
        assert not path.exists()
        await backend.update_token(started.state, "")  # already gone: nothing to do
        await backend.update_token(started.state, "tok-2")  # signed in again
        assert path.read_text() == "tok-2"
        assert path.stat().st_mode & 0o777 == 0o600
        if os.geteuid() == 0:
            assert (path.stat().st_uid, path.stat().st_gid) == (50010, 5063)
    finally:
        await backend.stop(started.state, now=True)


async def _secret_value(cluster: KubeCluster, ns: str, name: str) -> str | None:
    async with kube_http(cluster) as k:
        r = await k.get(f"/api/v1/namespaces/{ns}/secrets/{name}")
    if r.status_code == 404:
        return None
    return base64.b64decode(r.json()["data"].get("bearer_token", "")).decode()


@pytest.mark.k8s
async def test_kubernetes_token_secret_follows_the_refresher(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub
) -> None:
    ns = await new_namespace(k8s_cluster)
    app = await af_hub(
        facility(),
        spawner={"backend_options": {"kubeconfig": str(k8s_cluster.kubeconfig), "namespace": ns}},
    )
    base = {"uid": 50011, "gid": 5063, "vos": ["cms"], "access_token": "tok-1"}
    user = await make_user(app, "rena", auth_state=base)
    r = await request_spawn(app, "rena", {"flavor": "cms-el9"})
    assert r.status_code in (201, 202), r.text
    await spawn_result(app, "rena")
    spawner = user.spawners[""]
    assert await _secret_value(k8s_cluster, ns, "jupyter-rena-token") == "tok-1"
    # what afauth's refresher does after a renewal, then after a revocation
    await spawner.auth_state_updated({**base, "access_token": "tok-2"})
    assert await _secret_value(k8s_cluster, ns, "jupyter-rena-token") == "tok-2"
    await spawner.auth_state_updated({**base, "access_token": None, "signed_out": "revoked"})
    assert await _secret_value(k8s_cluster, ns, "jupyter-rena-token") == ""
    await user.save_auth_state({**base, "access_token": None})
    assert await spawner.poll() is None  # the poll agrees: nothing rewritten
    assert await _secret_value(k8s_cluster, ns, "jupyter-rena-token") == ""
    await stop_server(app, "rena")
    assert await _secret_value(k8s_cluster, ns, "jupyter-rena-token") is None
