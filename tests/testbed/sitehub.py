"""A real ``jupyterhub`` process running one of the site configurations of examples/sites/.

The hub is started with ``jupyterhub -f run_config.py``, a small file that loads the site's
own ``jupyterhub_config.py`` unchanged (``load_subconfig``) and then sets only what a
deployment (Helm chart, pod) sets around it: the ports on loopback, where the hub is reached,
the proxy command, and a service token the test reads the REST API with. The site's peers
(issuers, LDAP servers, cluster) come from the ``AF_SITE_*`` variables of
``examples/sites/_site_env.py`` given in ``env``; the servers' namespace from ``POD_NAMESPACE``.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any

import httpx

from testbed.procs import PeerProcess, free_port

VENV_BIN = Path(sys.executable).parent
SITES = Path(__file__).resolve().parents[2] / "examples" / "sites"
START_TIMEOUT = 90.0
_XSRF = re.compile(r'(?:name="_xsrf" value="|xsrf_token: ")([^"]+)"')  # form, or page.html

RUN_CONFIG = """\
c = get_config()  # noqa: F821
load_subconfig({site_config!r})  # noqa: F821  -- the site's file, unchanged
# what the deployment sets around it (test bed: everything on loopback)
c.JupyterHub.bind_url = {public!r}
c.JupyterHub.hub_bind_url = {hub!r}
c.JupyterHub.hub_connect_url = {hub!r}
c.ConfigurableHTTPProxy.api_url = {proxy_api!r}
c.ConfigurableHTTPProxy.command = [{proxy_cmd!r}]
c.ConfigurableHTTPProxy.pid_file = {pid_file!r}
c.JupyterHub.services.append({{"name": "site-test", "api_token": {token!r}}})
c.JupyterHub.load_roles.append(
    {{"name": "site-test", "services": ["site-test"],
      "scopes": ["admin:users", "admin:servers", "list:users", "read:metrics"]}}
)
"""


def free_ports(n: int) -> list[int]:
    return [free_port() for _ in range(n)]  # never the same port twice


class SiteHub:
    """``examples/sites/<site>/jupyterhub_config.py`` in a real hub process."""

    def __init__(self, site: str, workdir: Path) -> None:
        self.site = site
        self.dir = workdir
        self.state = workdir / "state"
        self.secrets = workdir / "secrets"
        for d in (self.state, self.secrets):
            d.mkdir(parents=True, exist_ok=True)
        public, hub, api = free_ports(3)
        self.public_url = f"http://127.0.0.1:{public}/"
        self.hub_url = self.public_url + "hub/"
        self.token = secrets.token_hex(32)
        self.prometheus_token = secrets.token_hex(32)
        self.write_secret("prometheus-token", self.prometheus_token)
        (workdir / "run_config.py").write_text(
            RUN_CONFIG.format(
                site_config=str(SITES / site / "jupyterhub_config.py"),
                public=self.public_url,
                hub=f"http://127.0.0.1:{hub}",
                proxy_api=f"http://127.0.0.1:{api}",
                proxy_cmd=str(VENV_BIN / "configurable-http-proxy"),
                pid_file=str(workdir / "proxy.pid"),
                token=self.token,
            )
        )
        self.proc: PeerProcess | None = None

    def write_secret(self, name: str, value: str) -> None:
        path = self.secrets / name
        path.write_text(value + "\n")
        path.chmod(0o600)

    def env(self, **site: str) -> dict[str, str]:
        """The hub's environment: the test bed's ``AF_SITE_*`` overrides and the usual keys."""
        return {
            "AF_SITE_STATE_DIR": str(self.state),
            "AF_SITE_SECRETS_DIR": str(self.secrets),
            "AF_SITE_PUBLIC_URL": self.public_url,
            "JUPYTERHUB_CRYPT_KEY": secrets.token_hex(32),
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
            **site,
        }

    def start(self, env: dict[str, str]) -> None:
        self.proc = PeerProcess(
            "jupyterhub",
            [str(VENV_BIN / "jupyterhub"), "-f", str(self.dir / "run_config.py")],
            self.dir,
            env=env,
            cwd=self.dir,
        )
        self.proc.wait_until(self._answers, START_TIMEOUT, f"the {self.site} hub's REST API")

    def _answers(self) -> bool:
        r = httpx.get(f"{self.hub_url}api/users?limit=1", headers=self.headers, timeout=2)
        return r.status_code == 200

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(grace=15)

    def log(self, lines: int = 80) -> str:
        return self.proc.tail(lines) if self.proc is not None else ""

    # -- clients -----------------------------------------------------------------------------
    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def api(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.hub_url + "api", headers=self.headers, timeout=60, trust_env=False
        )

    def browser(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=60, trust_env=False)

    async def xsrf(self, browser: httpx.AsyncClient, path: str) -> tuple[str, httpx.Response]:
        page = await browser.get(self.hub_url + path)
        match = _XSRF.search(page.text)
        assert match, (page.status_code, page.text[:2000])
        return match.group(1), page

    async def user(self, name: str) -> dict[str, Any]:
        async with self.api() as api:
            r = await api.get(f"/users/{name}")
            r.raise_for_status()
            model: dict[str, Any] = r.json()
            return model
