"""A MockHub running ``AFAuthenticator``, and a scripted browser for its login pages.

``auth_hub`` is a function-scoped factory fixture: ``hub = await auth_hub({...AFAuthenticator
config...})`` starts a MockHub (real proxy, real hub HTTP server) whose OIDC callbacks are
registered with the session's OIDC test bed. Browsers are ``httpx.AsyncClient`` instances with
their own cookie jars; ``drive_login`` walks the real oidc-provider login pages.

The hub is stopped without ``shutdown_cancel_tasks`` (which would cancel every task of the
session event loop, including other fixtures').
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from jupyterhub.crypto import CryptKeeper
from jupyterhub.tests.mocking import MockHub
from jupyterhub.tests.utils import public_url
from jupyterhub.utils import random_port
from traitlets.config import Config

from afauth.authenticator import AFAuthenticator
from testbed.oidc.login import drive_login
from testbed.oidc.provider import OIDCTestbed

PROXY = str(Path(sys.executable).parent / "configurable-http-proxy")
_XSRF = re.compile(r'name="_xsrf" value="([^"]+)"')


@dataclass
class AuthHub:
    app: Any
    url: str  # public base URL, e.g. http://127.0.0.1:PORT/@/space%20word/
    oidc: OIDCTestbed | None = None
    browsers: list[httpx.AsyncClient] = field(default_factory=list)

    @property
    def authenticator(self) -> AFAuthenticator:
        auth: AFAuthenticator = self.app.authenticator
        return auth

    @property
    def hub_url(self) -> str:
        return self.url + "hub/"

    @property
    def base_path(self) -> str:
        return urlsplit(self.url).path

    def callback_uri(self, idp: str) -> str:
        return f"{self.hub_url}login/{idp}/callback"

    def browser(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(timeout=30.0, trust_env=False)
        self.browsers.append(client)
        return client

    # -- hub state -------------------------------------------------------------------------------

    def user(self, name: str) -> Any:
        """The hub's User (KeyError if there is none)."""
        return self.app.users[name]

    async def auth_state(self, name: str) -> dict[str, Any]:
        state: dict[str, Any] = await self.user(name).get_auth_state()
        return state

    def groups_of(self, name: str) -> list[str]:
        return sorted(g.name for g in self.user(name).groups)

    def roles_of(self, name: str) -> list[str]:
        return sorted(r.name for r in self.user(name).roles)

    # -- password IdPs ---------------------------------------------------------------------------

    async def login_page(self, browser: httpx.AsyncClient, next_url: str = "") -> httpx.Response:
        params = {"next": next_url} if next_url else None
        return await browser.get(self.hub_url + "login", params=params)

    async def password_login(
        self,
        browser: httpx.AsyncClient,
        idp: str,
        username: str,
        password: str,
        *,
        next_url: str = "",
    ) -> httpx.Response:
        """Submit the login page's form of ``idp``; the response is not followed."""
        page = await self.login_page(browser, next_url)
        match = _XSRF.search(page.text)
        assert match, page.text[:2000]
        params = {"next": next_url} if next_url else None
        return await browser.post(
            f"{self.hub_url}login/{idp}",
            params=params,
            data={"_xsrf": match.group(1), "username": username, "password": password},
        )

    # -- OIDC IdPs -------------------------------------------------------------------------------

    async def start(self, browser: httpx.AsyncClient, idp: str, next_url: str = "") -> str:
        """``GET /hub/login/<idp>``: the IdP authorization URL the hub redirects to."""
        params = {"next": next_url} if next_url else None
        response = await browser.get(f"{self.hub_url}login/{idp}", params=params)
        assert response.status_code == 302, (response.status_code, response.text[:1000])
        return urljoin(str(response.url), response.headers["location"])

    async def authorize(
        self, browser: httpx.AsyncClient, authorize_url: str, username: str, password: str
    ) -> str:
        """Sign in at the real IdP; the callback URL (with code and state), not requested."""
        return await drive_login(browser, authorize_url, username, password)

    async def callback(self, browser: httpx.AsyncClient, url: str) -> httpx.Response:
        return await browser.get(url)

    async def oidc_login(
        self,
        browser: httpx.AsyncClient,
        idp: str,
        username: str,
        password: str | None = None,
        *,
        next_url: str = "",
    ) -> httpx.Response:
        authorize_url = await self.start(browser, idp, next_url)
        callback = await self.authorize(
            browser, authorize_url, username, password or f"{username}-pw"
        )
        return await self.callback(browser, callback)


def issuer_of(oidc: OIDCTestbed, url: str) -> str:
    for name, info in oidc.issuers.items():
        if info.issuer == url:
            return name
    raise KeyError(url)


def hub_config(auth: dict[str, Any], run_dir: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """MockHub config running AFAuthenticator; the proxy's pid file goes to ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        # a base URL below / (httpx would re-encode MockHub's default '/@/space%20word/')
        "JupyterHub": {
            "authenticator_class": AFAuthenticator,
            "bind_url": f"http://127.0.0.1:{random_port()}/af/",
            "cookie_secret": os.urandom(32),
        },
        "ConfigurableHTTPProxy": {"command": [PROXY], "pid_file": str(run_dir / "proxy.pid")},
        "CryptKeeper": {"keys": [os.urandom(32)]},
        "AFAuthenticator": auth,
    }
    for name, section in sections.items():
        config.setdefault(name, {}).update(section)
    return config


async def start_hub(config: dict[str, Any], oidc: OIDCTestbed | None) -> AuthHub:
    MockHub.clear_instance()
    CryptKeeper.clear_instance()
    app = MockHub.instance(config=Config(config))
    await app.initialize()
    await app.start()
    hub = AuthHub(app=app, url=public_url(app), oidc=oidc)
    if oidc is not None:
        for name, idp in hub.authenticator.auth_config.idps.items():
            issuer = getattr(idp, "issuer", None)
            if issuer:
                oidc.add_redirect_uris(hub.callback_uri(name), issuer=issuer_of(oidc, issuer))
    return hub


async def stop_hub(hub: AuthHub) -> None:
    for browser in hub.browsers:
        await browser.aclose()
    app = hub.app
    for idp in app.authenticator.auth_config.idps.values():
        await idp.close()
    if app.http_server:
        app.http_server.stop()
    for pc in app._periodic_callbacks.values():
        pc.stop()
    await app.cleanup()
    app.db_file.close()
    MockHub.clear_instance()
    CryptKeeper.clear_instance()


HubFactory = Callable[..., Awaitable[AuthHub]]


@pytest.fixture
async def auth_hub(tmp_path: Path) -> AsyncIterator[HubFactory]:
    """``await auth_hub(afauth_config, oidc=oidc_testbed, **other_sections)`` → AuthHub."""
    hubs: list[AuthHub] = []

    async def make(
        auth: dict[str, Any], *, oidc: OIDCTestbed | None = None, **sections: dict[str, Any]
    ) -> AuthHub:
        auth = {"binding_db": str(tmp_path / f"bindings-{len(hubs)}.sqlite"), **auth}
        hub = await start_hub(hub_config(auth, tmp_path / f"hub-{len(hubs)}", **sections), oidc)
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        await stop_hub(hub)
