"""The demo hub (`scripts/demo` configuration) as a person uses it: a real jupyterhub process
with the Python configurable-http-proxy, driven by headless Chromium through chromedriver."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from testbed.procs import PeerProcess, free_port

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parents[2]
SHOTS = Path(os.environ.get("AF_SCREENSHOTS", "/tmp/af-screenshots"))


@pytest.fixture
def demo_hub(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "AF_DEMO_DIR": str(tmp_path),
        "AF_DEMO_URL": url,
        "AF_DEMO_HUB_PORT": str(free_port()),
        "AF_DEMO_PROXY_API": f"http://127.0.0.1:{free_port()}",
        "AF_DEMO_GATEWAY_PORT": str(free_port()),  # the demo's dask-gateway-server
        "AF_DEMO_GATEWAY_API_PORT": str(free_port()),
        "JUPYTERHUB_CRYPT_KEY": "ab" * 32,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    hub = PeerProcess(
        "jupyterhub",
        [
            str(Path(sys.executable).parent / "jupyterhub"),
            "-f",
            str(ROOT / "examples" / "demo" / "jupyterhub_config.py"),
        ],
        tmp_path,
        env=env,
        cwd=tmp_path,
    )
    try:
        hub.wait_until(
            lambda: httpx.get(f"{url}/hub/login", timeout=2).status_code == 200,
            60,
            "demo hub login page",
        )
        yield url
    finally:
        hub.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'chromium'}",
    ):
        options.add_argument(flag)
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: webdriver.Chrome, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def test_sign_in_pick_a_flavor_and_reach_jupyterlab(
    demo_hub: str, browser: webdriver.Chrome
) -> None:
    wait = WebDriverWait(browser, 60)
    browser.get(f"{demo_hub}/hub/login")
    _shot(browser, "1-login")
    assert "Demo sign-in (any password)" in browser.page_source
    browser.find_element(
        By.CSS_SELECTOR, "form[action$='/hub/login/demo'] input[name=username]"
    ).send_keys("ada")
    browser.find_element(
        By.CSS_SELECTOR, "form[action$='/hub/login/demo'] input[name=password]"
    ).send_keys("anything")
    browser.find_element(By.CSS_SELECTOR, "form[action$='/hub/login/demo'] [type=submit]").click()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "input[name=flavor]")))
    _shot(browser, "2-spawn-form")
    flavors = [
        e.get_attribute("value")
        for e in browser.find_elements(By.CSS_SELECTOR, "input[name=flavor]")
    ]
    assert flavors == ["cms-analysis", "scratch"]  # ada is CMS: no DUNE flavor offered
    browser.find_element(By.CSS_SELECTOR, "input[name=flavor][value=scratch]").click()
    browser.find_element(
        By.CSS_SELECTOR, "form#spawn_form [type=submit], form [type=submit]"
    ).click()
    deadline = time.monotonic() + 90
    while "/user/ada/lab" not in browser.current_url and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "/user/ada/lab" in browser.current_url, browser.current_url
    wait.until(lambda d: "JupyterLab" in d.title)
    time.sleep(2)
    _shot(browser, "3-jupyterlab")


def test_unknown_flavor_in_the_url_is_refused_in_the_page(
    demo_hub: str, browser: webdriver.Chrome
) -> None:
    browser.get(f"{demo_hub}/hub/login")
    form = "form[action$='/hub/login/demo']"
    browser.find_element(By.CSS_SELECTOR, f"{form} input[name=username]").send_keys("bob")
    browser.find_element(By.CSS_SELECTOR, f"{form} input[name=password]").send_keys("pw")
    browser.find_element(By.CSS_SELECTOR, f"{form} [type=submit]").click()
    WebDriverWait(browser, 30).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "input[name=flavor]"))
    )
    # a forged query option: bob (DUNE) asks for the CMS flavor
    browser.get(f"{demo_hub}/hub/spawn/bob?flavor=cms-analysis")
    WebDriverWait(browser, 30).until(lambda d: "is for members of cms" in d.page_source)
    _shot(browser, "4-refused")
    assert "/user/bob/lab" not in browser.current_url
