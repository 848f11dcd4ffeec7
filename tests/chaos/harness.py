"""A real ``jupyterhub`` process for the chaos suite: sqlite in a temporary directory, the
Python configurable-http-proxy run beside it (so the hub can be SIGKILLed and restarted on
the same database and ports), ``spawner_class = "af"`` with the kubernetes backend against
the session's control plane, a dummy authenticator, and an admin service token that the
tests use to drive the REST API with httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from testbed.k8s import KubeCluster
from testbed.procs import PeerProcess, free_port

VENV_BIN = Path(sys.executable).parent
HUB_START_TIMEOUT = 90.0
FLAVOR = "small"  # schedulable: a pod that runs at once on a kwok node
STUCK = "stuck"  # larger than any node: Pending until the spawner gives up (Unschedulable)


def chaos_facility(vos: Mapping[str, int]) -> dict[str, Any]:
    """One VO per scenario, quota counted in servers; a runnable and an unschedulable flavor."""
    flavors: list[dict[str, Any]] = [
        {
            "name": FLAVOR,
            "vos": list(vos),
            "image": "chaos/notebook:1",
            "cpu": "100m",
            "memory": "128Mi",
            "default": True,
        },
        {"name": STUCK, "vos": list(vos), "image": "chaos/notebook:1", "cpu": 200, "memory": "1Gi"},
    ]
    return {
        "site": {"name": "chaos facility"},
        "vos": {vo: {"quota": {"servers": n}, "per_user": {"servers": 1}} for vo, n in vos.items()},
        "flavors": flavors,
    }


@dataclass(frozen=True)
class SpawnOutcome:
    """What became of one spawn request, as a client of the hub sees it."""

    user: str
    status: int  # HTTP status of the POST (0: no answer, e.g. the hub was killed)
    result: str  # "ready", "failed", "refused" (4xx on the POST), "lost" (no answer)
    message: str = ""
    seconds: float = 0.0


class RealHub:
    """One hub installation (config, database, proxy) whose process can be killed and restarted."""

    def __init__(
        self,
        workdir: Path,
        cluster: KubeCluster,
        namespace: str,
        facility: Mapping[str, Any],
        users: Iterable[str],
        spawner: Mapping[str, Any] | None = None,
        backend: Mapping[str, Any] | None = None,
    ) -> None:
        self.dir = workdir
        self.cluster = cluster
        self.namespace = namespace
        self.token = secrets.token_hex(32)
        self.proxy_token = secrets.token_hex(32)
        self.hub_port, self.proxy_port, self.proxy_api_port = free_port(), free_port(), free_port()
        self.api_url = f"http://127.0.0.1:{self.hub_port}/hub/api"
        self.starts = 0
        self.kills = 0
        self.proc: PeerProcess | None = None
        self.proxy: PeerProcess | None = None
        (workdir / "facility.yaml").write_text(yaml.safe_dump(dict(facility)))
        uid_map = {u: {"uid": 60000 + i, "gid": 60000} for i, u in enumerate(sorted(set(users)))}
        (workdir / "uids.yaml").write_text(yaml.safe_dump(uid_map))
        self._write_config(dict(spawner or {}), dict(backend or {}))

    # -- configuration -----------------------------------------------------------------------
    def _write_config(self, spawner: dict[str, Any], backend: dict[str, Any]) -> None:
        settings = {
            "hub_port": self.hub_port,
            "proxy_port": self.proxy_port,
            "proxy_api": f"http://127.0.0.1:{self.proxy_api_port}",
            "proxy_token": self.proxy_token,
            "db_url": f"sqlite:///{self.dir / 'jupyterhub.sqlite'}",
            "cookie_secret_file": str(self.dir / "cookie_secret"),
            "token": self.token,
            "spawner": {
                "facility_file": str(self.dir / "facility.yaml"),
                "backend": "kubernetes",
                "backend_options": {
                    "kubeconfig": str(self.cluster.kubeconfig),
                    "namespace": self.namespace,
                    **backend,
                },
                "uid_sources": ["static"],
                "uid_map_file": str(self.dir / "uids.yaml"),
                "start_timeout": 60,
                "http_timeout": 30,
                **spawner,
            },
        }
        (self.dir / "settings.json").write_text(json.dumps(settings, indent=1))
        (self.dir / "jupyterhub_config.py").write_text(CONFIG)

    # -- processes ---------------------------------------------------------------------------
    def _start_proxy(self) -> None:
        self.proxy = PeerProcess(
            "proxy",
            [
                str(VENV_BIN / "configurable-http-proxy"),
                "--ip=127.0.0.1",
                f"--port={self.proxy_port}",
                "--api-ip=127.0.0.1",
                f"--api-port={self.proxy_api_port}",
                f"--default-target=http://127.0.0.1:{self.hub_port}",
            ],
            self.dir,
            env={"CONFIGPROXY_AUTH_TOKEN": self.proxy_token},
        )
        self.proxy.wait_until(
            lambda: (
                httpx.get(
                    f"http://127.0.0.1:{self.proxy_api_port}/api/routes",
                    headers={"Authorization": f"token {self.proxy_token}"},
                    timeout=2,
                ).status_code
                == 200
            ),
            30,
            "configurable-http-proxy API",
        )

    def start(self) -> float:
        """Start (or restart) the hub on the same database and ports; seconds until it answers."""
        if self.proxy is None or not self.proxy.alive():
            self._start_proxy()
        started = time.monotonic()
        self.proc = PeerProcess(
            f"jupyterhub-{self.starts}",
            [str(VENV_BIN / "jupyterhub"), "-f", str(self.dir / "jupyterhub_config.py")],
            self.dir,
            env={
                "AF_CHAOS_SETTINGS": str(self.dir / "settings.json"),
                "JUPYTERHUB_CRYPT_KEY": "c4" * 32,
                "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
                **_other_source(),
            },
            cwd=self.dir,
        )
        self.starts += 1
        self.proc.wait_until(self._answers, HUB_START_TIMEOUT, "hub REST API")
        return time.monotonic() - started

    def _answers(self) -> bool:
        r = httpx.get(f"{self.api_url}/users?limit=1", headers=self.headers, timeout=2)
        return r.status_code == 200

    def kill(self) -> None:
        """SIGKILL the hub: no cleanup of any kind runs (the proxy stays, like in a pod)."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.proc.pid, signal.SIGKILL)
        self.proc.proc.wait(10)
        self.proc.stop()  # closes the log file
        self.kills += 1

    def stop(self) -> None:
        for proc in (self.proc, self.proxy):
            if proc is not None:
                proc.stop(grace=5)

    def log_tail(self, lines: int = 40) -> str:
        return self.proc.tail(lines) if self.proc is not None else ""

    def logs(self) -> str:
        """Every hub log of this installation, in start order."""
        parts = []
        for i in range(self.starts):
            path = self.dir / f"jupyterhub-{i}.log"
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    # -- REST API ----------------------------------------------------------------------------
    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def client(self, timeout: float = 60.0, connections: int = 100) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.api_url,
            headers=self.headers,
            timeout=timeout,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=20),
        )

    async def create_users(self, names: list[str], group: str) -> None:
        """Users, and a hub group named like their VO (how the spawner finds VO membership)."""
        async with self.client() as api:
            r = await api.post("/users", json={"usernames": names})
            assert r.status_code == 201, r.text
            r = await api.post(f"/groups/{group}")
            assert r.status_code in (201, 409), r.text
            r = await api.post(f"/groups/{group}/users", json={"users": names})
            assert r.status_code == 200, r.text

    async def users(self) -> list[dict[str, Any]]:
        """Every user model (paginated API)."""
        out: list[dict[str, Any]] = []
        headers = {"Accept": "application/jupyterhub-pagination+json"}
        async with self.client() as api:
            offset = 0
            while True:
                r = await api.get(f"/users?offset={offset}&limit=200", headers=headers)
                r.raise_for_status()
                page = r.json()
                out += page["items"]
                nxt = page["_pagination"].get("next")
                if not nxt:
                    return out
                offset = nxt["offset"]

    async def servers(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The hub's own view: (user, server name) → server model, for servers it considers
        running or pending (the ``servers`` of a user model lists active servers only)."""
        out = {}
        for user in await self.users():
            for name, model in (user.get("servers") or {}).items():
                out[(user["name"], name)] = model
        return out

    async def settle(self, within: float = 120.0) -> dict[tuple[str, str], dict[str, Any]]:
        """Wait until no server is pending (start or stop); returns the hub's view."""
        deadline = time.monotonic() + within
        while True:
            view = await self.servers()
            pending = {k: v["pending"] for k, v in view.items() if v.get("pending")}
            if not pending:
                return view
            if time.monotonic() > deadline:
                raise AssertionError(f"servers still pending after {within:.0f}s: {pending}")
            await asyncio.sleep(0.5)

    # -- spawning ----------------------------------------------------------------------------
    async def spawn(
        self, user: str, options: Mapping[str, Any] | None = None, follow: bool = True
    ) -> SpawnOutcome:
        """POST the spawn; with ``follow``, read the progress stream until ready or failed."""
        started = time.monotonic()
        body = {"user_options": dict(options or {"flavor": FLAVOR})}
        try:
            async with self.client(timeout=90) as api:
                r = await api.post(f"/users/{user}/server", json=body)
                if r.status_code == 201:
                    return SpawnOutcome(user, 201, "ready", "", time.monotonic() - started)
                if r.status_code != 202:
                    return SpawnOutcome(
                        user, r.status_code, "refused", _message(r), time.monotonic() - started
                    )
                if not follow:
                    return SpawnOutcome(user, 202, "pending", "", time.monotonic() - started)
                result, message = await self._follow(api, user)
                return SpawnOutcome(user, 202, result, message, time.monotonic() - started)
        except httpx.HTTPError as exc:
            return SpawnOutcome(user, 0, "lost", f"{type(exc).__name__}: {exc}")

    async def _follow(self, api: httpx.AsyncClient, user: str) -> tuple[str, str]:
        async with api.stream("GET", f"/users/{user}/server/progress", timeout=120) as r:
            if r.status_code != 200:
                body = (await r.aread()).decode(errors="replace")
                return await self._after_stream(api, user, f"progress {r.status_code}: {body}")
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if event.get("ready"):
                    return "ready", ""
                if event.get("failed"):
                    return "failed", str(event.get("message", ""))
        return await self._after_stream(api, user, "progress stream ended")

    async def _after_stream(self, api: httpx.AsyncClient, user: str, why: str) -> tuple[str, str]:
        r = await api.get(f"/users/{user}")
        server = (r.json().get("servers") or {}).get("") if r.status_code == 200 else None
        if server and server.get("ready"):
            return "ready", ""
        return "failed", f"({why}; no failure message)"

    async def stop_server(self, user: str, wait: bool = True) -> int:
        async with self.client(timeout=120) as api:
            r = await api.delete(f"/users/{user}/server")
            if wait and r.status_code == 202:
                for _ in range(600):
                    got = await api.get(f"/users/{user}")
                    if "" not in (got.json().get("servers") or {}):
                        break
                    await asyncio.sleep(0.2)
            return r.status_code

    async def stop_all(self, users: Iterable[str] | None = None) -> None:
        view = await self.servers()
        names = sorted({u for u, _ in view if users is None or u in set(users)})
        await asyncio.gather(*(self.stop_server(u) for u in names))


def _other_source() -> dict[str, str]:
    """``AF_CHAOS_SRC=/path/to/src``: the hub imports afspawner from another checkout (e.g. a
    ``git archive`` of the last commit, to compare with the working tree)."""
    src = os.environ.get("AF_CHAOS_SRC")
    return {"PYTHONPATH": src} if src else {}


def _message(r: httpx.Response) -> str:
    try:
        return str(r.json().get("message", r.text))
    except ValueError:
        return r.text


@contextlib.asynccontextmanager
async def running_hub(hub: RealHub) -> AsyncIterator[RealHub]:
    """Start the hub (in a thread: it blocks while waiting) and always stop it."""
    try:
        await asyncio.to_thread(hub.start)
        yield hub
    finally:
        await asyncio.to_thread(hub.stop)


# The hub's configuration file: every value comes from settings.json written by RealHub.
CONFIG = """\
import json, os
c = get_config()  # noqa: F821
s = json.load(open(os.environ["AF_CHAOS_SETTINGS"]))
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = s["proxy_port"]
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = s["hub_port"]
c.JupyterHub.db_url = s["db_url"]
c.JupyterHub.cookie_secret_file = s["cookie_secret_file"]
c.JupyterHub.cleanup_servers = False
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.active_server_limit = 0
c.ConfigurableHTTPProxy.should_start = False
c.ConfigurableHTTPProxy.api_url = s["proxy_api"]
c.ConfigurableHTTPProxy.auth_token = s["proxy_token"]
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.Authenticator.enable_auth_state = True
c.JupyterHub.services = [{"name": "chaos", "api_token": s["token"]}]
c.JupyterHub.load_roles = [
    {
        "name": "chaos-driver",
        "scopes": ["admin:users", "admin:servers", "admin:groups", "list:users"],
        "services": ["chaos"],
    }
]
c.JupyterHub.spawner_class = "af"
for key, value in s["spawner"].items():
    setattr(c.AFSpawner, key, value)
"""
