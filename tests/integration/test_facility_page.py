"""The facility API (/hub/api/facility) on a MockHub with real servers (the local backend),
read with role-limited tokens: a user sees their own, a VO manager only their VO, an admin all."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from jupyterhub.tests.utils import auth_header
from jupyterhub.utils import url_path_join
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait
from traitlets.config import Config

from afspawner import facility_page, runtime
from integration.spawnkit import make_user, new_namespace, request_spawn, spawn_result, stop_server
from integration.test_demo_browser import _shot, browser, demo_hub
from integration.test_spawner_k8s_more import _fill_t4, _gpu_facility
from testbed.k8s import KubeCluster
from testbed.podstub import PodStub

__all__ = ["browser", "demo_hub"]  # the demo test's fixtures, used here too

pytestmark = [pytest.mark.hub]

FACILITY = {
    "site": {"name": "facility page test"},
    "vos": {
        "cms": {
            "display": "CMS",
            "quota": {"cpu": 4, "memory": "8Gi", "servers": 3},
            "per_user": {"cpu": 2, "memory": "4Gi", "servers": 1},
        },
        "dune": {"display": "DUNE", "quota": {"servers": 2}},
    },
    "gpu_classes": {"t4": {"display": "NVIDIA T4", "resource": "nvidia.com/gpu"}},
    "flavors": [
        {"name": "cms-nb", "vos": ["cms"], "image": "local", "cpu": 1, "memory": "1Gi"},
        {"name": "dune-nb", "vos": ["dune"], "image": "local", "cpu": 1, "memory": "1Gi"},
    ],
}


def page_config(tmp_path: Path) -> dict[str, Any]:
    """What ``facility_page.setup(c)`` adds, as MockHub config, plus a VO manager role."""
    c = Config()
    c.JupyterHub.extra_handlers = []
    c.JupyterHub.template_paths = []
    c.JupyterHub.custom_scopes = {}
    c.JupyterHub.extra_user_scopes = []
    facility_page.setup(c)
    return {
        **dict(c.JupyterHub),
        "load_roles": [
            {
                "name": "vo-manager-cms",
                "scopes": ["custom:af-facility:read!group=cms"],
                "users": ["carol"],
            },
            {
                "name": "dune-reader",
                "scopes": ["custom:af-facility:read!group=dune"],
                "services": ["dune-monitor"],
            },
        ],
        "services": [{"name": "dune-monitor", "api_token": "dune-monitor-token-0123456789"}],
    }


async def facility_hub(af_hub: Any, tmp_path: Path) -> Any:
    ids = {"uid": 50001, "gid": 5063}  # the servers run as the hub's user (demo mode)
    app = await af_hub(
        FACILITY,
        spawner={
            "backend": "local",
            "backend_options": {"root_dir": str(tmp_path / "servers"), "run_as_hub_user": True},
            "cmd": [str(Path(sys.executable).parent / "jupyterhub-singleuser")],
            "uid_sources": ["auth_state"],
            "args": ["--allow-root"] if os.geteuid() == 0 else [],
        },
        hub=page_config(tmp_path),
    )
    await make_user(app, "alice", ("cms",), ids)
    await make_user(app, "bob", ("dune",), ids)
    await make_user(app, "carol", (), ids)
    return app


async def get(app: Any, token: str, path: str = "api/facility") -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.get(
            url_path_join(app.hub.url, path), headers={"Authorization": f"token {token}"}
        )


def users(body: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(u["user"], u["vo"]) for u in body["users"]]


async def test_scoped_tokens_see_their_own_their_vo_or_everything(
    af_hub: Any, tmp_path: Path
) -> None:
    app = await facility_hub(af_hub, tmp_path)
    try:
        for user, flavor in (("alice", "cms-nb"), ("bob", "dune-nb")):
            r = await request_spawn(app, user, {"flavor": flavor})
            assert r.status_code in (201, 202), r.text
            await spawn_result(app, user)
        # one server too many: the per-user cap, refused with the ledger's message
        r = await request_spawn(app, "alice", {"flavor": "cms-nb"}, server="two")
        assert r.status_code == 403
        assert r.json()["message"] == "you already run 1/1 servers in VO cms; stop one first"

        # alice: her VO and her allowance, nobody else
        r = await get(app, app.users["alice"].new_api_token())
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["scope"], body["viewer"], body["vos"], body["users"]) == (
            "self",
            "alice",
            [],
            [],
        )
        (cms,) = body["my_vos"]
        mine = {a["resource"]: a for a in cms["mine"]["usage"]}
        assert (mine["servers"]["text"], mine["servers"]["left"]) == ("1 of 1", 0)
        assert cms["mine"]["servers"] == ["alice/"]
        assert {a["resource"]: a["text"] for a in cms["vo"]["usage"]}["cpu"] == "1 of 4"
        assert body["gpus"] == [
            {"gpu_class": "t4", "display": "NVIDIA T4", "free": None, "waiting": 0, "queue": []}
        ]

        # carol manages CMS: alice's usage, not bob's
        r = await get(app, app.users["carol"].new_api_token())
        body = r.json()
        assert body["scope"] == "vos" and [v["vo"] for v in body["vos"]] == ["cms"]
        assert users(body) == [("alice", "cms")]
        assert body["my_vos"] == []  # carol is in no VO herself

        # a service whose role reads DUNE
        r = await get(app, "dune-monitor-token-0123456789")
        assert r.status_code == 200, r.text
        assert users(r.json()) == [("bob", "dune")] and r.json()["viewer"] is None

        # admin: every VO and user
        r = await get(app, auth_header(app.db, "admin")["Authorization"].split()[1])
        body = r.json()
        assert body["scope"] == "all" and [v["vo"] for v in body["vos"]] == ["cms", "dune"]
        assert users(body) == [("alice", "cms"), ("bob", "dune")]

        # a token of alice's without the facility scope, and no token at all
        r = await get(app, app.users["alice"].new_api_token(scopes=["read:users!user"]))
        assert r.status_code == 403 and "custom:af-facility:read" in r.json()["message"]
        async with httpx.AsyncClient() as client:
            r = await client.get(url_path_join(app.hub.url, "api/facility"))
        assert r.status_code == 403
    finally:
        for user in ("alice", "bob"):
            if app.users[user].spawners[""].active:
                await stop_server(app, user)


async def test_the_page_renders_in_the_hubs_look(af_hub: Any, tmp_path: Path) -> None:
    """The page needs a login cookie: fetched here through the hub's own login (the dummy
    authenticator of MockHub accepts any password)."""
    app = await facility_hub(af_hub, tmp_path)
    # no spawner exists yet: the API creates the shared runtime from the spawner's config
    assert not any(u.spawners for u in app.users.values()) and not runtime._runtimes
    r = await get(app, auth_header(app.db, "admin")["Authorization"].split()[1])
    assert r.status_code == 200 and r.json()["users"] == [], r.text
    (rt,) = runtime._runtimes.values()
    assert rt.restored and rt.hub_view is not None
    base = app.bind_url.rstrip("/")
    async with httpx.AsyncClient(timeout=30, follow_redirects=True) as client:
        r = await client.get(f"{base}/hub/login")
        xsrf = client.cookies.get("_xsrf", "")
        r = await client.post(
            f"{base}/hub/login",
            data={"username": "alice", "password": "alice", "_xsrf": xsrf},
        )
        r = await client.get(f"{base}/hub/facility")
    assert r.status_code == 200, r.text
    page = r.text
    assert "<h1>facility page test</h1>" in page
    assert 'id="af-mine-cms"' in page and "Your allowance in CMS" in page
    assert 'href="/hub/facility">Facility</a>' in page  # the nav link
    assert "af-per-user" not in page  # a user sees no one else


@pytest.mark.k8s
async def test_gpu_queue_places_and_free_gpus_on_a_real_cluster(
    af_hub: Any, k8s_cluster: KubeCluster, pod_stub: PodStub, tmp_path: Path
) -> None:
    """Two spawns wait for T4s (all 8 held): each waiter sees its own place, the admin sees
    the queue, and the catalog says the flavor will wait."""
    ns = await new_namespace(k8s_cluster)
    opts = {"kubeconfig": str(k8s_cluster.kubeconfig), "namespace": ns}
    app = await af_hub(
        _gpu_facility(),
        spawner={"backend_options": opts, "gpu_wait": "queue", "gpu_queue_timeout": 120},
        hub=page_config(tmp_path),
    )
    holders = await _fill_t4(app)
    waiters = ("wait-1", "wait-2")
    try:
        for i, name in enumerate(waiters):
            state = {"uid": 62000 + i, "gid": 5063, "vos": ["cms"]}
            await make_user(app, name, groups=("gpu-approved",), auth_state=state)
            r = await request_spawn(app, name, {"flavor": "cms-t4"})
            assert r.status_code == 202, r.text
        for name in waiters:  # both are in the queue once they report it
            async for event in app.users[name].spawners[""].progress():
                if "waiting for a NVIDIA T4" in event["message"]:
                    break
        body = (await get(app, app.users["wait-2"].new_api_token())).json()
        assert body["my_queue"] == [
            {
                "gpu_class": "t4",
                "display": "NVIDIA T4",
                "server": "wait-2/",
                "ahead": 1,
                "waiting": 2,
            }
        ]
        t4 = next(g for g in body["gpus"] if g["gpu_class"] == "t4")
        assert (t4["free"], t4["waiting"], t4["queue"]) == (0, 2, [])
        mine = {a["resource"]: a["text"] for a in body["my_vos"][0]["vo"]["usage"]}
        assert mine["gpu:t4"] == "10 of 16"  # 2 x 4 held + 2 x 1 reserved while waiting
        admin = (await get(app, auth_header(app.db, "admin")["Authorization"].split()[1])).json()
        t4 = next(g for g in admin["gpus"] if g["gpu_class"] == "t4")
        assert t4["queue"] == ["wait-1/", "wait-2/"]
        form = await app.users["gpu-a"].spawners[""].get_options_form()
        assert "1 x NVIDIA T4 GPU (none free now; you will wait in a queue)" in form
    finally:
        for name in (*holders, *waiters):
            if app.users[name].spawners[""].active:
                await stop_server(app, name)


# -- in the browser: the demo hub (scripts/demo) ----------------------------------------------
@pytest.mark.browser
def test_demo_catalog_facility_page_and_quota_refusal_in_chromium(
    demo_hub: str, browser: webdriver.Chrome
) -> None:
    wait = WebDriverWait(browser, 90)
    login(browser, demo_hub, "ada")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[name=flavor]")))
    assert legends(browser) == ["CMS", "Open to every experiment"]
    assert "Your allowance in CMS: 0 of 2 servers" in browser.page_source
    # keyboard: the checked radio takes the focus, an arrow key moves the choice
    default = browser.find_element(By.CSS_SELECTOR, "input[name=flavor]:checked")
    assert default.get_attribute("value") == "cms-analysis"
    default.send_keys(Keys.ARROW_DOWN)
    picked = browser.find_element(By.CSS_SELECTOR, "input[name=flavor]:checked")
    assert picked.get_attribute("value") == "scratch"
    picked.send_keys(Keys.ARROW_UP)
    _shot(browser, "catalog-1-ada")
    start(browser, demo_hub, "ada", "")

    browser.get(f"{demo_hub}/hub/facility")
    mine = wait.until(ec.presence_of_element_located((By.ID, "af-mine-cms")))
    assert "1 of 2" in mine.text and "Facility" in browser.find_element(By.TAG_NAME, "nav").text
    _shot(browser, "facility-1-ada")

    browser.get(f"{demo_hub}/hub/spawn/ada/two")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[name=flavor]")))
    assert "Your allowance in CMS: 1 of 2 servers" in browser.page_source
    start(browser, demo_hub, "ada", "two")

    # one server too many: every CMS choice is disabled with the reason; submitting anyway
    # (no choice) is refused by the hub with the same message
    browser.get(f"{demo_hub}/hub/spawn/ada/three")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[name=flavor]")))
    flavors = browser.find_elements(By.CSS_SELECTOR, "input[name=flavor]")
    assert flavors and all(not f.is_enabled() for f in flavors)
    reason = "you already run 2/2 servers in VO cms; stop one first"
    assert reason in browser.find_element(By.CSS_SELECTOR, ".af-catalog").text
    _shot(browser, "catalog-2-ada-at-her-cap")
    browser.find_element(By.CSS_SELECTOR, "form#spawn_form [type=submit]").click()
    wait.until(lambda d: reason in d.page_source and "/hub/spawn" in d.current_url)
    assert "/user/ada/three" not in browser.current_url
    _shot(browser, "catalog-3-ada-refused")

    # cleo: two experiments in the catalog; on the page she manages DUNE, where no one runs
    browser.delete_all_cookies()
    login(browser, demo_hub, "cleo")
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[name=flavor]")))
    assert legends(browser) == ["CMS", "DUNE", "Open to every experiment"]
    values = [e.get_attribute("value") for e in browser.find_elements(By.NAME, "flavor")]
    assert values == ["cms-analysis", "dune-analysis", "scratch/cms", "scratch/dune"]
    _shot(browser, "catalog-4-cleo-two-experiments")
    browser.get(f"{demo_hub}/hub/facility")
    wait.until(ec.presence_of_element_located((By.ID, "af-per-vo")))
    assert "Experiments you manage" in browser.page_source
    assert "No server is running." in browser.page_source  # ada's servers are CMS's
    _shot(browser, "facility-2-cleo-manages-dune")

    # olga, the operator: every VO and user
    browser.delete_all_cookies()
    login(browser, demo_hub, "olga")
    browser.get(f"{demo_hub}/hub/facility")
    table = wait.until(ec.presence_of_element_located((By.ID, "af-user-table")))
    assert "ada/" in table.text and "ada/two" in table.text
    _shot(browser, "facility-3-olga-admin")


def login(browser: webdriver.Chrome, hub: str, name: str) -> None:
    browser.get(f"{hub}/hub/login")
    form = "form[action$='/hub/login/demo']"
    browser.find_element(By.CSS_SELECTOR, f"{form} input[name=username]").send_keys(name)
    browser.find_element(By.CSS_SELECTOR, f"{form} input[name=password]").send_keys("pw")
    browser.find_element(By.CSS_SELECTOR, f"{form} [type=submit]").click()
    # signed in once the hub's answer took the browser off the login page; a page asked for
    # before that goes out without the cookie and lands on the login page (once in CI)
    WebDriverWait(browser, 90).until(lambda d: "/hub/login" not in d.current_url)


def legends(browser: webdriver.Chrome) -> list[str]:
    return [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".af-group > legend")]


def start(browser: webdriver.Chrome, hub: str, user: str, server: str) -> None:
    """Submit the spawn form; wait until the hub sends the browser to the server."""
    browser.find_element(By.CSS_SELECTOR, "form#spawn_form [type=submit]").click()
    target = f"/user/{user}/{server}"
    deadline = time.monotonic() + 90
    while target not in browser.current_url and time.monotonic() < deadline:
        time.sleep(0.5)
    assert target in browser.current_url, browser.current_url
