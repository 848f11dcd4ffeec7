"""Every seed site's configuration (examples/sites/<site>/jupyterhub_config.py) runs end to end.

Each site's file is loaded unchanged by a real ``jupyterhub`` process (tests/testbed/sitehub.py)
whose peers are the test bed's, named by the ``AF_SITE_*`` variables only: the node
oidc-provider's CERN-, IAM- and CILogon-like issuers for CERN SSO, the ESCAPE IAM and CILogon
(clients registered there under the site's own client ids), slapd for the Fermilab and IHEP
directories, kube-apiserver + kwok for the cluster. LEAP's GitHub is replaced, by the same
mechanism, by oauthenticator's GenericOAuthenticator against the IAM-like issuer.

A user of each site signs in through the real login pages, starts a server from the spawn
form, and the test checks the pod on the cluster (namespace, uid/gid, image, environment), the
facility page, and the Prometheus metrics scraped with the site's own metrics token.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import ldap3
import pytest
from traitlets.config.loader import PyFileConfigLoader

from integration.spawnkit import kube_http, new_namespace, pods_in
from testbed.k8s import KubeCluster
from testbed.ldap.fixtures import LDAPTestbedFactory
from testbed.ldap.slapd import LDAPTestbed
from testbed.oidc.login import drive_login
from testbed.oidc.provider import OIDCTestbed
from testbed.podstub import PodStub
from testbed.sitehub import SITES, SiteHub

pytestmark = [pytest.mark.k8s, pytest.mark.oidc, pytest.mark.ldap, pytest.mark.hub]

SPAWN_WITHIN = 120.0
ISSUERS = {"cern": "cern", "iam": "iam", "cilogon": "cilogon"}  # IdP type → test-bed issuer
Login = Callable[[SiteHub, httpx.AsyncClient], Awaitable[httpx.Response]]


@dataclass
class Case:
    """One site: who signs in, what they start, what the cluster must then run."""

    user: str
    login: Login
    form: dict[str, str]
    uid: int | None  # None: a pool uid (checked against the pool's range)
    gid: int
    namespace: str = ""  # "" : the hub's own (POD_NAMESPACE)
    image: str = ""
    env: dict[str, str] = field(default_factory=dict)
    claims: list[tuple[str, str]] = field(default_factory=list)  # static claims: (name, class)
    home: tuple[str, str] | None = None  # the home claim the spawner creates: (size, class)
    named: dict[str, dict[str, str]] = field(default_factory=dict)  # more servers: name → form
    outsider: Login | None = None  # someone the site's gate must refuse
    others: list[tuple[Login, str, list[str]]] = field(
        default_factory=list
    )  # (login, name, groups)


def site_config(site: str) -> Any:
    """The site's configuration as the hub will see it (same environment)."""
    return PyFileConfigLoader("jupyterhub_config.py", path=str(SITES / site)).load_config()


def register_clients(hub: SiteHub, oidc: OIDCTestbed, site: str) -> None:
    """Register each OIDC/OAuth client of the site, under its production client id, at the
    test-bed issuer standing in for its IdP, and give the hub the secret file it names."""
    for idp in site_config(site).AFAuthenticator.idps:
        kind = idp["type"]
        if kind == "ldap":
            continue
        client_id = idp.get("client_id") or idp.get("options", {}).get("client_id")
        issuer = ISSUERS.get(kind, "iam")  # the oauthenticator stand-in: the IAM-like issuer
        secret = f"{site}-{idp['name']}-secret"
        oidc.add_client(
            issuer,
            client_id,
            redirect_uris=[f"{hub.hub_url}login/{idp['name']}/callback"],
            client_secret=secret,
        )
        hub.write_secret(Path(idp["client_secret_file"]).name, secret)


def oidc_login(idp: str, username: str) -> Login:
    async def login(hub: SiteHub, browser: httpx.AsyncClient) -> httpx.Response:
        r = await browser.get(f"{hub.hub_url}login/{idp}")
        assert r.status_code == 302, (r.status_code, r.text[:2000])
        authorize = urljoin(str(r.url), r.headers["location"])
        callback = await drive_login(browser, authorize, username, f"{username}-pw")
        return await browser.get(callback)

    return login


def password_login(idp: str, username: str, password: str) -> Login:
    async def login(hub: SiteHub, browser: httpx.AsyncClient) -> httpx.Response:
        xsrf, _ = await hub.xsrf(browser, "login")
        return await browser.post(
            f"{hub.hub_url}login/{idp}",
            data={"_xsrf": xsrf, "username": username, "password": password},
        )

    return login


# -- the peers standing in for each site's --------------------------------------------------------


def ucsd(hub: SiteHub, oidc: OIDCTestbed, **_: Any) -> tuple[dict[str, str], Case]:
    env = {
        "AF_SITE_ISSUER_CERN": oidc["cern"].issuer,
        "AF_SITE_ISSUER_UCSD": oidc["cilogon"].issuer,
    }
    # a CMS member signs in through "CERN" and gets CMS Data Analysis in the VO namespace
    case = Case(
        user="cmsuser",
        login=oidc_login("cern", "cmsuser"),
        form={"flavor": "cms-el9"},
        uid=None,
        gid=70000,
        namespace="af-cms",
        image="hub.opensciencegrid.org/cms/af-el9:latest",
        env={"AF_VO": "cms", "AF_FLAVOR": "cms-el9"},
        claims=[("ceph-cms", "")],
        home=("10Gi", ""),
        outsider=oidc_login("cern", "duneuser"),  # a CERN account without the cms-users role
        # a UCSD person through CILogon: afadmin@ucsd.edu becomes afadmin, in VO ucsd
        others=[(oidc_login("ucsd", "afadmin"), "afadmin", ["ucsd"])],
    )
    return env, case


def escape(hub: SiteHub, oidc: OIDCTestbed, **_: Any) -> tuple[dict[str, str], Case]:
    env = {"AF_SITE_ISSUER_ESCAPE_IAM": oidc["iam"].issuer}
    case = Case(
        user="atlasuser",
        login=oidc_login("escape-iam", "atlasuser"),
        form={"flavor": "atlas-opendata"},
        uid=None,
        gid=100,
        image="ghcr.io/vre-hub/vre-singleuser-atlasopendata:latest",
        env={"AF_VO": "atlas", "RUCIO_DEFAULT_AUTH_TYPE": "oidc"},
        claims=[("cvmfs", ""), ("vre-shared-home", "")],
    )
    return env, case


def ihep(hub: SiteHub, ldap_factory: LDAPTestbedFactory, **_: Any) -> tuple[dict[str, str], Case]:
    # a directory of its own: the hub's service account and an experiment group are added
    tb = ldap_factory("ihep")
    add_entries(
        tb,
        {
            f"cn=jupyterhub,{tb.services_dn}": {
                "objectClass": ["applicationProcess", "simpleSecurityObject"],
                "cn": "jupyterhub",
                "userPassword": "ihep-hub-password",
            },
            f"cn=bes3,{tb.groups_dn}": {
                "objectClass": ["posixGroup"],
                "cn": "bes3",
                "gidNumber": "7001",
                "memberUid": ["bob"],
            },
        },
    )
    hub.write_secret("ldap-bind-password", "ihep-hub-password")
    env = {
        "AF_SITE_LDAP_URL": tb.ldaps_uri,
        "AF_SITE_LDAP_CA_FILE": str(tb.ca_cert_path),
        "AF_SITE_LDAP_BASE": tb.base_dn,
    }
    case = Case(
        user="bob",
        login=password_login("ihep", "bob", "bob-password"),
        form={"flavor": "root6"},
        uid=50002,
        gid=9010,
        image="rootproject/root:6.26.00-conda",
        env={"AF_VO": "bes3"},
        home=("20Gi", ""),
        outsider=password_login("ihep", "alice", "alice-password"),  # in none of the experiments
    )
    return env, case


def fermilab(hub: SiteHub, ldap: LDAPTestbed, **_: Any) -> tuple[dict[str, str], Case]:
    hub.write_secret("ldap-bind-password", ldap.bind_password)
    hub.write_secret("dask-gateway-token", "eaf-dask-gateway-token")  # its Dask Gateway service
    env = {"AF_SITE_LDAP_URL": ldap.ldaps_uri, "AF_SITE_LDAP_CA_FILE": str(ldap.ca_cert_path)}
    case = Case(
        user="alice",
        login=password_login("fnal", "alice", "alice-password"),
        form={"flavor": "cmslpc-sl7"},
        uid=50001,
        gid=5063,
        image="mapsacosta/eafjupyter:cmslpc-notebook",
        env={"AF_VO": "cms"},
        claims=[("eaf-home", "")],
        named={"dask": {"flavor": "cmslpc-coffea-dask"}},
        outsider=password_login("fnal", "nina", "nina-password"),  # not in eaf-users
    )
    return env, case


LEAP_IMAGE = "quay.io/pangeo/ml-notebook:2023.05.08"  # the page's "Other..." example


def leap(hub: SiteHub, oidc: OIDCTestbed, **_: Any) -> tuple[dict[str, str], Case]:
    oidc.set_user(
        "iam",
        "leapuser",
        password="leapuser-pw",
        claims={
            "preferred_username": "leapuser",
            "name": "Lea Pangeo",
            "groups": ["leap-stc", "leap-stc:leap-pangeo-base-access"],
        },
    )
    oidc.set_user(
        "iam",
        "leapguest",
        password="leapguest-pw",
        claims={"preferred_username": "leapguest", "groups": ["leap-stc"]},  # in no team
    )
    env = {"AF_SITE_GITHUB_STANDIN": oidc["iam"].issuer}
    case = Case(
        user="leapuser",
        login=oidc_login("github", "leapuser"),
        form={
            "flavor": "pangeo-small",
            "image@pangeo-small": ":other",
            "image_other@pangeo-small": LEAP_IMAGE,
        },
        uid=None,
        gid=100,
        image=LEAP_IMAGE,
        env={"JUPYTER_IMAGE_SPEC": LEAP_IMAGE, "AF_VO": "leap"},
        home=("10Gi", "standard-rwo"),
        outsider=oidc_login("github", "leapguest"),
    )
    return env, case


Prepare = Callable[..., tuple[dict[str, str], Case]]
PREPARE: dict[str, Prepare] = {
    "ucsd-cms": ucsd,
    "escape-vre": escape,
    "ihep": ihep,
    "fermilab-eaf": fermilab,
    "leap-pangeo": leap,
}
IDP = {"ucsd-cms": "cern", "escape-vre": "escape-iam", "ihep": "ihep", "fermilab-eaf": "fnal"}


def add_entries(tb: LDAPTestbed, entries: dict[str, dict[str, Any]]) -> None:
    server = ldap3.Server(tb.host, port=tb.port)
    with ldap3.Connection(server, tb.admin_dn, tb.admin_password, auto_bind=True) as conn:
        for dn, attrs in entries.items():
            classes = attrs.pop("objectClass")
            assert conn.add(dn, classes, attrs), conn.result


# -- the cluster's side: claims that bind (the test cluster has no storage provisioner) -----------


def volume(ns: str, claim: str, storage_class: str) -> dict[str, Any]:
    """A PersistentVolume reserved for one claim, so the claim binds and the pod schedules."""
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{ns}-{claim}", "labels": {"af-test": ns}},
        "spec": {
            "capacity": {"storage": "100Gi"},
            "accessModes": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany"],
            "hostPath": {"path": f"/srv/af-test/{ns}/{claim}"},
            "storageClassName": storage_class,
            "claimRef": {"namespace": ns, "name": claim},
            "persistentVolumeReclaimPolicy": "Retain",
        },
    }


async def prepare_cluster(k8s: KubeCluster, case: Case, hub_ns: str) -> list[str]:
    """The namespaces the test creates (removed at the end), claims and their volumes."""
    created = []
    ns = case.namespace or hub_ns
    async with kube_http(k8s) as k:
        if case.namespace:
            r = await k.post("/api/v1/namespaces", json={"metadata": {"name": ns}})
            assert r.status_code in (201, 409), r.text
            created.append(ns)
        for claim, storage_class in case.claims:
            r = await k.post("/api/v1/persistentvolumes", json=volume(ns, claim, storage_class))
            assert r.status_code == 201, r.text
            pvc = {
                "metadata": {"name": claim},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "resources": {"requests": {"storage": "1Gi"}},
                    "storageClassName": storage_class,
                    "volumeName": f"{ns}-{claim}",
                },
            }
            r = await k.post(f"/api/v1/namespaces/{ns}/persistentvolumeclaims", json=pvc)
            assert r.status_code == 201, r.text
        for claim, _ in case.claims:  # a site's own claims were bound long before anyone signs in
            await _bound(k, ns, claim)
        if case.home is not None:
            claim = f"home-{case.user}"
            r = await k.post("/api/v1/persistentvolumes", json=volume(ns, claim, case.home[1]))
            assert r.status_code == 201, r.text
    return created


async def _bound(k: httpx.AsyncClient, ns: str, claim: str) -> None:
    """Wait until the controller-manager bound the claim to its volume (slow under load: the
    pod would otherwise sit Unschedulable past the spawner's grace, as once in CI)."""
    phase: object = None
    try:
        async with asyncio.timeout(120):
            while phase != "Bound":
                r = await k.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
                ok = r.status_code == 200
                phase = r.json().get("status", {}).get("phase") if ok else r.status_code
                if phase != "Bound":
                    await asyncio.sleep(0.5)
    except TimeoutError:
        raise AssertionError(f"claim {ns}/{claim} not bound within 120 s (last: {phase})") from None


async def cleanup_cluster(k8s: KubeCluster, namespaces: list[str]) -> None:
    async with kube_http(k8s) as k:
        for ns in namespaces:
            with contextlib.suppress(httpx.HTTPError):
                await k.delete(f"/api/v1/namespaces/{ns}")
            with contextlib.suppress(httpx.HTTPError):
                await k.request(
                    "DELETE",
                    "/api/v1/persistentvolumes",
                    params={"labelSelector": f"af-test={ns}"},
                )


# -- the test -------------------------------------------------------------------------------------


async def spawn(hub: SiteHub, browser: httpx.AsyncClient, user: str, form: dict[str, str],
                server: str = "") -> dict[str, Any]:  # fmt: skip
    path = f"spawn/{user}/{server}" if server else "spawn"
    xsrf, page = await hub.xsrf(browser, path)
    assert page.status_code == 200, page.text[:2000]
    r = await browser.post(hub.hub_url + path, data={"_xsrf": xsrf, **form})
    assert r.status_code in (302, 303), (r.status_code, r.text[:3000])
    deadline = time.monotonic() + SPAWN_WITHIN
    while time.monotonic() < deadline:
        model = (await hub.user(user)).get("servers", {}).get(server)
        if model and model.get("ready"):
            return dict(model)
        if model is None and time.monotonic() > deadline - SPAWN_WITHIN + 5:
            pending = await browser.get(f"{hub.hub_url}spawn-pending/{user}/{server}")
            raise AssertionError(f"spawn failed: {pending.text[:3000]}\n{hub.log()}")
        await asyncio.sleep(0.5)
    raise AssertionError(f"{user}/{server} not ready in {SPAWN_WITHIN:.0f}s\n{hub.log()}")


def pod_env(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in pod["spec"]["containers"][0].get("env", [])}


@pytest.mark.parametrize("site", list(PREPARE))
async def test_a_user_of_the_site_signs_in_and_starts_a_server(
    site: str,
    k8s_cluster: KubeCluster,
    pod_stub: PodStub,
    oidc_testbed: OIDCTestbed,
    ldap_testbed: LDAPTestbed,
    ldap_testbed_factory: LDAPTestbedFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub = SiteHub(site, Path(tempfile.mkdtemp(prefix=f"af-site-{site}-")))
    hub_ns = await new_namespace(k8s_cluster)
    peers, case = PREPARE[site](
        hub, oidc=oidc_testbed, ldap=ldap_testbed, ldap_factory=ldap_testbed_factory
    )
    env = hub.env(**peers, AF_SITE_KUBECONFIG=str(k8s_cluster.kubeconfig), POD_NAMESPACE=hub_ns)
    for key, value in env.items():  # the site's file read here as the hub will read it
        if key.startswith("AF_SITE_"):
            monkeypatch.setenv(key, value)
    register_clients(hub, oidc_testbed, site)
    namespaces = [hub_ns, *await prepare_cluster(k8s_cluster, case, hub_ns)]
    try:
        await asyncio.to_thread(hub.start, env)
        async with hub.browser() as browser:
            signed_in = await case.login(hub, browser)
            assert signed_in.status_code == 302, (signed_in.status_code, signed_in.text[:3000])
            assert "jupyterhub-hub-login" in browser.cookies, hub.log()
            await spawn(hub, browser, case.user, case.form)
            for name, form in case.named.items():
                await spawn(hub, browser, case.user, form, server=name)
            facility = await browser.get(hub.hub_url + "facility")
            assert facility.status_code == 200, facility.text[:2000]
        for login, name, groups in case.others:
            async with hub.browser() as browser:
                other = await login(hub, browser)
                assert other.status_code == 302, (other.status_code, other.text[:2000])
            assert sorted((await hub.user(name))["groups"]) == groups
        if case.outsider is not None:
            async with hub.browser() as browser:
                refused = await case.outsider(hub, browser)
                assert refused.status_code == 403, (refused.status_code, refused.text[:2000])
                assert "jupyterhub-hub-login" not in browser.cookies

        ns = case.namespace or hub_ns
        pods = {p["metadata"]["name"]: p for p in await pods_in(k8s_cluster, ns)}
        pod = pods[f"jupyter-{case.user}"]
        assert pod["status"]["phase"] == "Running"
        security = pod["spec"]["securityContext"]
        if case.uid is None:  # a pool account
            assert security["runAsUser"] >= 60000, security
        else:  # the directory's uidNumber
            assert security["runAsUser"] == case.uid, security
        assert security["runAsGroup"] == case.gid, security
        assert pod["spec"]["containers"][0]["image"] == case.image
        env_vars = pod_env(pod)
        for key, value in case.env.items():
            assert env_vars.get(key) == value, (key, env_vars)
        for name in case.named:
            assert pods[f"jupyter-{case.user}--{name}"]["status"]["phase"] == "Running"

        # metrics, scraped with the site's own Prometheus service token
        async with httpx.AsyncClient(trust_env=False) as http:
            metrics = await http.get(
                hub.hub_url + "metrics",
                headers={"Authorization": f"token {hub.prometheus_token}"},
            )
        assert metrics.status_code == 200
        idp = IDP.get(site, "github")
        assert f'jupyterhub_af_logins_total{{idp="{idp}",outcome="success"}} 1.0' in metrics.text
        assert 'jupyterhub_af_spawns_total{flavor="' + case.form["flavor"] in metrics.text
    finally:
        await asyncio.to_thread(hub.stop)
        await cleanup_cluster(k8s_cluster, namespaces)
