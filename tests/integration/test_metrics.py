"""Metrics scraped over HTTP from a running hub's ``/hub/metrics`` after what the test did.

Spawns run on the real control plane (MockHub + kube-apiserver + kwok); sign-ins go through a
MockHub running AFAuthenticator against the real slapd and the dev IdP. The default Prometheus
registry is process-wide, so every check compares a value before and after.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from jupyterhub.tests.utils import auth_header
from jupyterhub.utils import url_path_join
from prometheus_client.parser import text_string_to_metric_families

from afspawner.kube.phases import pod_phases
from integration.authhub import AuthHub, auth_hub
from integration.spawnkit import (
    facility,
    make_user,
    new_namespace,
    pods_in,
    request_spawn,
    spawn_result,
    stop_server,
)
from integration.test_auth_ldap import MAPPING, ldap_idp
from integration.test_auth_oidc import af_config
from testbed.k8s import KubeCluster
from testbed.ldap.fixtures import LDAPTestbedFactory, ldap_testbed_factory
from testbed.ldap.slapd import LDAPTestbed
from testbed.oidc.fixtures import oidc_testbed
from testbed.oidc.provider import OIDCTestbed
from testbed.podstub import PodStub

__all__ = ["auth_hub", "ldap_testbed_factory", "oidc_testbed"]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
A100 = "a100-3g.20gb"  # 2 units on the test cluster's gpu-a100-1


async def scrape(url: str, headers: Mapping[str, str] | None = None) -> Samples:
    async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
        r = await client.get(url, headers=dict(headers or {}))
    assert r.status_code == 200, r.text[:500]
    assert r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def val(samples: Samples, name: str, **labels: str) -> float:
    return get(samples, name, **labels) or 0.0


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return val(after, name, **labels) - val(before, name, **labels)


# -- spawner -------------------------------------------------------------------------------------
async def hub_metrics(app: Any) -> Samples:
    """``GET /hub/metrics`` on the hub's HTTP server with an admin token (read:metrics)."""
    return await scrape(url_path_join(app.hub.url, "metrics"), auth_header(app.db, "admin"))


async def wait_for(app: Any, check: Any, what: str) -> Samples:
    for _ in range(200):
        samples = await hub_metrics(app)
        if check(samples):
            return samples
        await asyncio.sleep(0.1)
    raise AssertionError(f"metrics never showed {what}")


PHASE = "jupyterhub_af_spawn_phase_duration_seconds_count"
SPAWNS = "jupyterhub_af_spawns_total"
REFUSALS = "jupyterhub_af_spawn_refusals_total"
USED, LIMIT = "jupyterhub_af_quota_used", "jupyterhub_af_quota_limit"
FREE, QUEUE = "jupyterhub_af_gpus_free", "jupyterhub_af_gpu_queue_length"
GPU_WAIT = "jupyterhub_af_gpu_queue_wait_seconds"


@pytest.mark.k8s
@pytest.mark.hub
async def test_spawns_refusals_quota_and_gpu_queue_are_scraped(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub
) -> None:
    ns = await new_namespace(k8s_cluster)
    app = await af_hub(
        facility(cms={"quota": {"cpu": 64, "memory": "256Gi", "servers": 3}}),
        spawner={
            "backend_options": {"kubeconfig": str(k8s_cluster.kubeconfig), "namespace": ns},
            "uid_sources": ["auth_state"],
            "gpu_wait": "queue",
            "gpu_queue_timeout": 120,
        },
    )
    for i, name in enumerate(("alice", "dave", "erin", "bob", "carol")):
        await make_user(app, name, auth_state={"uid": 50001 + i, "gid": 5063, "vos": ["cms"]})
    gpu_labels = {"vo": "cms", "flavor": "cms-a100", "gpu_class": A100}
    s0 = await hub_metrics(app)

    # two A100 servers take both units of the class
    for name in ("alice", "dave"):
        r = await request_spawn(app, name, {"flavor": "cms-a100"})
        assert r.status_code in (201, 202), r.text
        await spawn_result(app, name)
    s1 = await hub_metrics(app)
    assert delta(s1, s0, SPAWNS, outcome="success", vo="cms", flavor="cms-a100") == 2
    pod = next(p for p in await pods_in(k8s_cluster, ns) if p["metadata"]["name"] == "jupyter-dave")
    # the pod's own timestamps give the last three phases (0 s each on kwok's simulated nodes)
    assert set(pod_phases(pod)) == {"scheduling", "image_pull", "ready"}
    for phase in ("admission", "gpu_wait", "create", "scheduling", "image_pull", "ready"):
        assert delta(s1, s0, PHASE, phase=phase, **gpu_labels) == 2, phase
    assert delta(s1, s0, GPU_WAIT + "_count", gpu_class=A100, outcome="granted") == 2
    assert val(s1, USED, vo="cms", resource="servers", gpu_class="") == 2
    assert val(s1, USED, vo="cms", resource="gpus", gpu_class=A100) == 2
    assert val(s1, USED, vo="cms", resource="cpu", gpu_class="") == 4  # 2 CPU each
    assert val(s1, LIMIT, vo="cms", resource="servers", gpu_class="") == 3
    assert get(s1, LIMIT, vo="cms", resource="gpus", gpu_class=A100) is None  # no GPU quota
    assert get(s1, FREE, gpu_class=A100) == 0
    assert get(s1, QUEUE, gpu_class=A100) == 0

    # a third waits in the queue until a unit is freed
    r = await request_spawn(app, "erin", {"flavor": "cms-a100"})
    assert r.status_code == 202, r.text
    s2 = await wait_for(app, lambda s: get(s, QUEUE, gpu_class=A100) == 1, "erin in the queue")
    assert val(s2, USED, vo="cms", resource="servers", gpu_class="") == 3  # reserved already
    await stop_server(app, "alice")
    await spawn_result(app, "erin")
    s3 = await hub_metrics(app)
    assert get(s3, QUEUE, gpu_class=A100) == 0 and get(s3, FREE, gpu_class=A100) == 0
    assert delta(s3, s1, GPU_WAIT + "_count", gpu_class=A100, outcome="granted") == 1
    assert delta(s3, s1, GPU_WAIT + "_sum", gpu_class=A100, outcome="granted") > 0
    assert delta(s3, s1, PHASE, phase="gpu_wait", **gpu_labels) == 1

    # the quota is full (dave, erin + bob): carol is refused, and forged options too
    r = await request_spawn(app, "bob", {"flavor": "cms-el9"})
    assert r.status_code in (201, 202), r.text
    await spawn_result(app, "bob")
    s4 = await hub_metrics(app)
    running = len(await pods_in(k8s_cluster, ns))
    assert val(s4, USED, vo="cms", resource="servers", gpu_class="") == running == 3
    r = await request_spawn(app, "carol", {"flavor": "cms-el9"})
    assert r.status_code == 403 and "VO cms already runs 3/3 servers" in r.json()["message"]
    r = await request_spawn(app, "carol", {"flavor": "cms-el9", "image": "evil/miner"})
    assert r.status_code == 400, r.text
    r = await request_spawn(app, "carol", {"flavor": "cms-t4"})  # not in gpu-approved
    assert r.status_code == 403, r.text
    s5 = await hub_metrics(app)
    for reason in ("quota", "bad_option", "forbidden"):
        assert delta(s5, s4, REFUSALS, reason=reason) == 1, reason
    assert delta(s5, s4, SPAWNS, outcome="refused", vo="cms", flavor="cms-el9") == 1
    assert delta(s5, s4, SPAWNS, outcome="refused", vo="", flavor="") == 2
    assert delta(s5, s4, SPAWNS, outcome="success", vo="cms", flavor="cms-el9") == 0

    for name in ("dave", "erin", "bob"):
        await stop_server(app, name)
    s6 = await hub_metrics(app)
    assert val(s6, USED, vo="cms", resource="servers", gpu_class="") == 0
    assert get(s6, FREE, gpu_class=A100) == 2


# -- authenticator -------------------------------------------------------------------------------
LOGINS = "jupyterhub_af_logins_total"
LOGIN_REFUSALS = "jupyterhub_af_login_refusals_total"
IDP = "jupyterhub_af_idp_request_duration_seconds_count"
DEMO = {"name": "demo", "type": "dev", "users": {"ada": {"groups": ["cms"]}}, "hidden": True}


@pytest.mark.ldap
@pytest.mark.hub
async def test_login_outcomes_and_idp_latency_are_scraped(
    auth_hub: Any, ldap_testbed_factory: LDAPTestbedFactory
) -> None:
    ldap_testbed: LDAPTestbed = ldap_testbed_factory("metrics")
    hub: AuthHub = await auth_hub(
        {
            "idps": [ldap_idp(ldap_testbed), DEMO],
            "mapping": MAPPING,
            "allow_insecure_dev_idp": True,
            "allowed_vos": ["cms"],
            "blocked_vos": ["dune"],
        },
        JupyterHub={"authenticate_prometheus": False},
        Authenticator={"allow_all": False},
    )
    url = hub.hub_url + "metrics"  # through the proxy, as a scraper outside the hub pod would
    before = await scrape(url)
    attempts = [
        ("fnal", "alice", "alice-password", 302),  # cms: success
        ("fnal", "alice", "wrong", 403),  # credentials
        ("fnal", "nina", "nina-password", 403),  # not in eaf-users (require_groups): access
        ("fnal", "bob", "bob-password", 403),  # dune: blocked
        ("fnal", "vera", "vera-password", 403),  # no VO: not allowed
        ("demo", "ada", "", 403),  # no VO from the demo IdP: not allowed
        ("demo", "zed", "", 403),  # unknown demo user: credentials
    ]
    for idp, user, password, status in attempts:
        response = await hub.password_login(hub.browser(), idp, user, password)
        assert response.status_code == status, (idp, user, response.text[:1000])
    after = await scrape(url)
    assert delta(after, before, LOGINS, idp="fnal", outcome="success") == 1
    assert delta(after, before, LOGINS, idp="fnal", outcome="refused") == 4
    assert delta(after, before, LOGINS, idp="demo", outcome="refused") == 2
    assert delta(after, before, LOGINS, idp="fnal", outcome="error") == 0
    for idp, reason in [
        ("fnal", "credentials"),
        ("fnal", "access"),
        ("fnal", "blocked"),
        ("fnal", "not_allowed"),
        ("demo", "not_allowed"),
        ("demo", "credentials"),
    ]:
        assert delta(after, before, LOGIN_REFUSALS, idp=idp, reason=reason) == 1, (idp, reason)
    # every LDAP sign-in binds (service account at first, then as the user) and searches
    assert delta(after, before, IDP, idp="fnal", operation="bind") >= 5
    assert delta(after, before, IDP, idp="fnal", operation="search") >= 5
    assert (
        val(after, "jupyterhub_af_idp_request_duration_seconds_sum", idp="fnal", operation="bind")
        > 0
    )

    # the directory goes away: the sign-in is an error, and the failed attempts are timed too
    ldap_testbed.stop()
    response = await hub.password_login(hub.browser(), "fnal", "alice", "alice-password")
    assert response.status_code == 503, response.text[:1000]
    last = await scrape(url)
    assert delta(last, after, LOGINS, idp="fnal", outcome="error") == 1
    assert delta(last, after, LOGIN_REFUSALS, idp="fnal", reason="idp_unavailable") == 1


@pytest.mark.oidc
@pytest.mark.hub
async def test_oidc_outcomes_and_token_endpoint_latency_are_scraped(
    auth_hub: Any, oidc_testbed: OIDCTestbed
) -> None:
    hub: AuthHub = await auth_hub(
        af_config(oidc_testbed, "cern"),
        oidc=oidc_testbed,
        JupyterHub={"authenticate_prometheus": False},
    )
    url = hub.hub_url + "metrics"
    before = await scrape(url)
    browser = hub.browser()
    callback = await hub.authorize(
        browser, await hub.start(browser, "cern"), "cmsuser", "cmsuser-pw"
    )
    assert (await browser.get(callback)).status_code == 302
    assert (await browser.get(callback)).status_code == 400  # replayed: bad request
    other = hub.browser()
    state = parse_qs(urlsplit(await hub.start(other, "cern")).query)["state"][0]
    denied = await other.get(
        hub.callback_uri("cern"), params={"state": state, "error": "access_denied"}
    )
    assert denied.status_code == 403, denied.text[:1000]
    after = await scrape(url)
    assert delta(after, before, LOGINS, idp="cern", outcome="success") == 1
    assert delta(after, before, LOGINS, idp="cern", outcome="refused") == 2
    assert delta(after, before, LOGIN_REFUSALS, idp="cern", reason="bad_request") == 1
    assert delta(after, before, LOGIN_REFUSALS, idp="cern", reason="credentials") == 1
    # one code exchanged at the token endpoint, timed
    assert delta(after, before, IDP, idp="cern", operation="token") == 1
    token_sum = "jupyterhub_af_idp_request_duration_seconds_sum"
    assert delta(after, before, token_sum, idp="cern", operation="token") > 0
    assert val(after, IDP, idp="cern", operation="discovery") >= 1
    assert val(after, IDP, idp="cern", operation="jwks") >= 1
