"""Per-service tokens by OAuth 2.0 Token Exchange (RFC 8693; issue 11, part 2).

A real hub (MockHub, real proxy) with AFAuthenticator + AFSpawner and the local backend (a real
``jupyterhub-singleuser`` process), the node oidc-provider IAM-like issuer with its
token-exchange grant (tests/testbed/oidc/exchange.mjs), which allows the hub's client two
audiences with limited scopes. At sign-in the hub exchanges the user's access token for one
token per declared service; the server finds them in ``$AF_TOKENS_DIR``; the issuer refuses a
disallowed audience and a too-wide scope (those files are absent, the sign-in works); when the
refresher renews the access token (20-second tokens, nobody visiting), the service tokens are
exchanged again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import yaml

from afauth.exchange import ACCESS_TOKEN_TYPE, GRANT_TYPE, STATE_KEY
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
from integration.test_token_renewal import (
    FACILITY,
    MARGIN,
    TTL,
    person,
    short_tokens,
    start_server,
    stop_everything,
    wait_until,
)
from testbed.k8s import KubeCluster
from testbed.oidc.fixtures import oidc_testbed
from testbed.oidc.provider import OIDCTestbed
from testbed.podstub import PodStub

pytestmark = [pytest.mark.hub]

__all__ = ["auth_hub", "oidc_testbed", "short_tokens"]

RUCIO = "https://rucio.example"
XROOTD = "xrootd.example"
#: what the issuer lets the hub's client ask for, per audience
ALLOWED = {
    RUCIO: ["storage.read:/", "storage.modify:/user"],
    XROOTD: ["storage.read:/store"],
}
SERVICES = {
    "rucio": {"audience": RUCIO, "scopes": ["storage.read:/", "storage.modify:/user/{username}"]},
    "xrootd": {
        "audience": XROOTD,
        "scopes": ["storage.read:/store/user/{username}"],
        "vos": ["cms"],
    },
    "eos": {"audience": "https://eos.example", "scopes": ["storage.read:/eos"]},  # not allowed
    "wide": {"audience": RUCIO, "scopes": ["storage.modify:/"]},  # scope beyond what is allowed
    "atlas-disk": {"audience": RUCIO, "scopes": ["storage.read:/"], "vos": ["atlas"]},
}


@pytest.fixture
def exchange_allowed(oidc_testbed: OIDCTestbed) -> Any:
    oidc_testbed.allow_token_exchange("iam", ALLOWED)
    yield oidc_testbed
    oidc_testbed.allow_token_exchange("iam", {})


def with_services(config: dict[str, Any], services: dict[str, Any]) -> dict[str, Any]:
    config["idps"] = [{**config["idps"][0], "services": services}]
    return config


async def hub_with_services(
    auth_hub: Any, tb: OIDCTestbed, tmp_path: Path, services: dict[str, Any]
) -> AuthHub:
    """test_token_renewal's hub (local backend, refresher every 0.5 s) with ``services``."""
    facility = tmp_path / "facility.yaml"
    facility.write_text(yaml.safe_dump(FACILITY))
    config = af_config(tb, "iam", refresh_margin=MARGIN, refresh_interval=0.5, refresh_batch=10)
    hub: AuthHub = await auth_hub(
        with_services(config, services),
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
            "uid_pool_range": [61100, 61199],
            "start_timeout": 60,
            "http_timeout": 30,
        },
    )
    return hub


async def jwks(tb: OIDCTestbed) -> jwt.PyJWKSet:
    async with httpx.AsyncClient(trust_env=False) as http:
        doc = (await http.get(tb["iam"].discovery_url)).json()
        return jwt.PyJWKSet.from_dict((await http.get(doc["jwks_uri"])).json())


def verified(token: str, keys: jwt.PyJWKSet, audience: str) -> dict[str, Any]:
    """The claims of a service token, checked against the issuer's JWKS (signature, aud, exp)."""
    kid = jwt.get_unverified_header(token)["kid"]
    key = next(k for k in keys.keys if k.key_id == kid)
    claims: dict[str, Any] = jwt.decode(token, key.key, algorithms=["RS256"], audience=audience)
    return claims


@pytest.mark.oidc
async def test_sign_in_gives_the_server_one_narrowed_token_per_service(
    auth_hub: Any,
    exchange_allowed: OIDCTestbed,
    short_tokens: OIDCTestbed,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    tb = exchange_allowed
    person(tb, "xavier")
    hub = await hub_with_services(auth_hub, tb, tmp_path, SERVICES)
    try:
        signed_in = time.time()
        assert (await hub.oidc_login(hub.browser(), "iam", "xavier")).status_code == 302
        await start_server(hub, "xavier")
        state = await hub.auth_state("xavier")
        folder = Path(hub.user("xavier").spawners[""]._state["tokens_dir"])
        assert folder.stat().st_mode & 0o777 == 0o700
        files = {p.name: p.read_text() for p in folder.iterdir()}
        assert sorted(files) == ["rucio", "xrootd"]  # eos/wide refused, atlas-disk not for cms
        assert all((folder / n).stat().st_mode & 0o777 == 0o600 for n in files)
        keys = await jwks(tb)
        rucio = verified(files["rucio"], keys, RUCIO)
        xrootd = verified(files["xrootd"], keys, XROOTD)
        assert rucio["scope"] == "storage.read:/ storage.modify:/user/xavier"
        assert xrootd["scope"] == "storage.read:/store/user/xavier"
        assert rucio["sub"] == xrootd["sub"] == state["subject"]
        assert rucio["iss"] == tb["iam"].issuer
        assert files["rucio"] != state["access_token"]
        # what the hub kept, and why two services have no token
        tokens = state[STATE_KEY]
        assert set(tokens) == {"rucio", "xrootd", "eos", "wide"}
        assert tokens["eos"]["access_token"] is None and tokens["eos"]["error"] == "invalid_target"
        assert tokens["wide"]["access_token"] is None and tokens["wide"]["error"] == "invalid_scope"
        assert tokens["rucio"]["access_token"] == files["rucio"]
        # the server's own default token is still the login's
        token_file = Path(hub.user("xavier").spawners[""]._state["token_file"])
        assert token_file.read_text() == state["access_token"]
        # nobody visits: the refresher renews the access token, and the service tokens follow
        first_exp = state["expires_at"]
        assert first_exp - signed_in <= TTL + 1
        deadline = first_exp + 5
        while time.time() < deadline:
            now = {p.name: p.read_text() for p in folder.iterdir()}
            if set(now) == {"rucio", "xrootd"} and all(now[n] != files[n] for n in now):
                break
            await asyncio.sleep(0.1)
        renewed_at = time.time()
        assert renewed_at < first_exp, "service tokens not renewed before the old ones expired"
        again = await hub.auth_state("xavier")
        assert again["access_token"] != state["access_token"]
        new_rucio = verified((folder / "rucio").read_text(), keys, RUCIO)
        assert new_rucio["scope"] == rucio["scope"] and new_rucio["exp"] > rucio["exp"]
        assert again[STATE_KEY]["rucio"]["access_token"] == (folder / "rucio").read_text()
        assert not (folder / "eos").exists()
        # the reasons are logged, the tokens never
        assert "token exchange for eos refused: invalid_target" in caplog.text
        assert "token exchange for wide refused: invalid_scope" in caplog.text
        every = [*files.values(), (folder / "rucio").read_text(), state["access_token"]]
        assert not [t for t in every if t in caplog.text]
        print(  # the timeline, for docs/credentials.md
            f"\nexchange timeline: access token lifetime {first_exp - signed_in:.1f}s; "
            f"service tokens renewed {renewed_at - signed_in:.1f}s after sign-in, "
            f"{first_exp - renewed_at:.1f}s before the first ones expired (margin {MARGIN}s)"
        )
    finally:
        await stop_everything(hub)


@pytest.mark.oidc
async def test_a_required_service_the_issuer_refuses_refuses_the_sign_in(
    auth_hub: Any, exchange_allowed: OIDCTestbed
) -> None:
    tb = exchange_allowed
    person(tb, "yolanda")
    services = {"eos": {**SERVICES["eos"], "required": True}}
    hub: AuthHub = await auth_hub(with_services(af_config(tb, "iam"), services), oidc=tb)
    response = await hub.oidc_login(hub.browser(), "iam", "yolanda")
    assert response.status_code == 403
    assert "token exchange for eos" in response.text


# -- the issuer's own checks (no hub) ------------------------------------------------------------


async def _exchange(tb: OIDCTestbed, form: dict[str, str]) -> httpx.Response:
    info = tb["iam"]
    basic = base64.b64encode(f"{info.client_id}:{info.client_secret}".encode()).decode()
    async with httpx.AsyncClient(trust_env=False) as http:
        doc = (await http.get(info.discovery_url)).json()
        return await http.post(
            doc["token_endpoint"], data=form, headers={"Authorization": f"Basic {basic}"}
        )


async def _access_token(tb: OIDCTestbed, auth_hub: Any, name: str) -> str:
    person(tb, name)
    hub: AuthHub = await auth_hub(af_config(tb, "iam"), oidc=tb)
    assert (await hub.oidc_login(hub.browser(), "iam", name)).status_code == 302
    token: str = (await hub.auth_state(name))["access_token"]
    return token


@pytest.mark.oidc
async def test_the_issuer_checks_audience_scope_and_subject_token(
    auth_hub: Any, exchange_allowed: OIDCTestbed
) -> None:
    tb = exchange_allowed
    subject = await _access_token(tb, auth_hub, "zeno")
    base = {
        "grant_type": GRANT_TYPE,
        "subject_token": subject,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "audience": RUCIO,
        "scope": "storage.read:/data storage.modify:/user/zeno",
    }
    ok = await _exchange(tb, base)
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE and body["token_type"] == "Bearer"
    claims = verified(body["access_token"], await jwks(tb), RUCIO)
    assert claims["scope"] == base["scope"]
    refusals = {
        "invalid_target": {**base, "audience": "https://eos.example"},
        "invalid_scope": {**base, "scope": "storage.modify:/users"},  # not under /user
        "invalid_grant": {**base, "subject_token": subject[:-2] + "xx"},
        "invalid_request": {k: v for k, v in base.items() if k != "audience"},
    }
    for error, form in refusals.items():
        r = await _exchange(tb, form)
        assert r.status_code in (400, 401), (error, r.text)
        assert r.json()["error"] == error, r.text
    # the exchanged token is not a subject token, and an expired one is refused
    r = await _exchange(tb, {**base, "subject_token": body["access_token"]})
    assert r.json()["error"] == "invalid_grant"
    assert await userinfo_status(tb, "iam", subject) == 200
    tb.allow_token_exchange("iam", {})  # the client loses the audience
    r = await _exchange(tb, base)
    assert r.json()["error"] == "invalid_target"
    assert json.loads(r.text)  # an OAuth error body


# -- Kubernetes: the services Secret follows the auth_state --------------------------------------


async def _services_secret(cluster: KubeCluster, ns: str, name: str) -> dict[str, str] | None:
    async with kube_http(cluster) as k:
        r = await k.get(f"/api/v1/namespaces/{ns}/secrets/{name}")
    if r.status_code == 404:
        return None
    data = r.json().get("data") or {}
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


@pytest.mark.k8s
async def test_kubernetes_services_secret_follows_the_refresher(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub
) -> None:
    ns = await new_namespace(k8s_cluster)
    app = await af_hub(
        facility(),
        spawner={"backend_options": {"kubeconfig": str(k8s_cluster.kubeconfig), "namespace": ns}},
    )
    tokens = {
        "rucio": {"access_token": "r-1", "error": None},
        "eos": {"access_token": None, "error": "invalid_target"},
    }
    base = {"uid": 50012, "gid": 5063, "vos": ["cms"], "access_token": "tok-1", STATE_KEY: tokens}
    user = await make_user(app, "sven", auth_state=base)
    r = await request_spawn(app, "sven", {"flavor": "cms-el9"})
    assert r.status_code in (201, 202), r.text
    await spawn_result(app, "sven")
    secret = "jupyter-sven-services"
    assert await _services_secret(k8s_cluster, ns, secret) == {"rucio": "r-1"}
    async with kube_http(k8s_cluster) as k:
        pod = (await k.get(f"/api/v1/namespaces/{ns}/pods/jupyter-sven")).json()
    [container] = pod["spec"]["containers"]
    assert {"name": "AF_TOKENS_DIR", "value": "/etc/af-tokens"} in container["env"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["af-services"]["secret"]["secretName"] == secret
    spawner = user.spawners[""]
    # what afauth's refresher does after a renewal (eos now given), then after a revocation
    renewed = {"rucio": {"access_token": "r-2"}, "eos": {"access_token": "e-2"}}
    await spawner.auth_state_updated({**base, "access_token": "tok-2", STATE_KEY: renewed})
    assert await _services_secret(k8s_cluster, ns, secret) == {"rucio": "r-2", "eos": "e-2"}
    await spawner.auth_state_updated({**base, "access_token": None, "signed_out": "revoked"})
    assert await _services_secret(k8s_cluster, ns, secret) == {}
    await stop_server(app, "sven")
    assert await _services_secret(k8s_cluster, ns, secret) is None


LONG, SHORT = 40, 15  # access tokens are renewed after 30 s: too late for 15 s service tokens


@pytest.fixture
def short_exchanged(exchange_allowed: OIDCTestbed) -> Any:
    tb = exchange_allowed
    old = tb["iam"].ttl["access_token"]
    tb.set_ttl("iam", access_token=LONG)
    tb._control("POST", "settings", "iam", {"ttl": {"exchanged_token": SHORT}})
    yield tb
    tb._control("POST", "settings", "iam", {"ttl": {"exchanged_token": None}})
    tb.set_ttl("iam", access_token=old)


@pytest.mark.oidc
async def test_service_tokens_shorter_than_the_access_token_are_renewed_in_time(
    auth_hub: Any, short_exchanged: OIDCTestbed, tmp_path: Path
) -> None:
    tb = short_exchanged
    person(tb, "wanda")
    hub = await hub_with_services(auth_hub, tb, tmp_path, {"rucio": SERVICES["rucio"]})
    try:
        assert (await hub.oidc_login(hub.browser(), "iam", "wanda")).status_code == 302
        await start_server(hub, "wanda")
        state = await hub.auth_state("wanda")
        first = state[STATE_KEY]["rucio"]
        assert first["expires_at"] < state["expires_at"] - 5
        rucio = Path(hub.user("wanda").spawners[""]._state["tokens_dir"]) / "rucio"
        await wait_until(lambda: rucio.read_text() != first["access_token"], first["expires_at"])
        assert rucio.read_text() != first["access_token"], "not renewed before it expired"
        assert time.time() < first["expires_at"]
        claims = verified(rucio.read_text(), await jwks(tb), RUCIO)
        assert claims["exp"] - claims["iat"] == SHORT
        print(f"\nshort service tokens: renewed {first['expires_at'] - time.time():.1f}s early")
    finally:
        await stop_everything(hub)
