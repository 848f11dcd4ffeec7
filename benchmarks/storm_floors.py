"""The floors of the spawn storm: pods POSTed straight to the apiserver, no spawner.

- ``floor``: a bare pod, awaited through one shared watch (dispatched by pod name), then the
  same readiness check as the spawners;
- ``floor-same``: the very Pod and Secret AFSpawner writes (built by ``afspawner.manifests``
  before the storm; the Secret owned by the pod): the least a hub can do for the objects
  AFSpawner makes;
- ``floor-pod``: AFSpawner's Pod alone, without its Secret: with the two above, it splits
  the cost of AFSpawner's objects between the pod's content and the Secret's writes.

Also the settings every contender shares (:class:`StormSettings`) and the storm's facility.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from jupyterhub.utils import wait_for_http_server

log = logging.getLogger("storm.floor")
IMAGE = "storm/notebook:1"
CPU, MEMORY = "1", "1Gi"
FLOOR_LABELS = {"app.kubernetes.io/name": "storm-floor"}
FLOOR_CONNECTIONS = 100  # the floor's connection pool (the spawners use their own)


@dataclass(frozen=True)
class StormSettings:
    server: str
    ca_path: Path
    token: str
    kubeconfig: Path
    workdir: Path
    port: int  # the notebook port: the stub answers it on every pod IP
    start_timeout: float
    http_timeout: float
    pacing_budget: float = 0.02  # AFSpawner.pacing_budget
    peer_pids: tuple[tuple[str, int], ...] = ()  # the other processes whose CPU is counted


FACILITY = {
    "site": {"name": "spawn storm"},
    "vos": {
        "storm": {
            "quota": {"cpu": 100000, "memory": "100000Gi", "servers": 100000},
            "per_user": {"cpu": 1, "memory": "1Gi", "servers": 1},
        }
    },
    "flavors": [
        {"name": "storm", "vos": ["storm"], "image": IMAGE, "cpu": 1, "memory": MEMORY,
         "default": True},
    ],
}  # fmt: skip


def _ready_ip(pod: Mapping[str, Any]) -> str | None:
    status = pod.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or ()
    )
    ip = status.get("podIP")
    return str(ip) if ready and ip and status.get("phase") == "Running" else None


class PodWatch:
    """One LIST + WATCH of the floor's pods; waiters are woken by pod name only."""

    def __init__(
        self, session: aiohttp.ClientSession, server: str, namespace: str, selector: str
    ) -> None:
        self.session = session
        self.url = f"{server}/api/v1/namespaces/{namespace}/pods?labelSelector={selector}"
        self.present: dict[str, str | None] = {}  # pod name → IP once ready
        self._ready: dict[str, asyncio.Future[str]] = {}
        self._gone: dict[str, asyncio.Future[None]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        version = await self._list()
        self._task = asyncio.get_running_loop().create_task(self._watch(version))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _list(self) -> str:
        async with self.session.get(self.url) as r:
            r.raise_for_status()
            body = await r.json()
        self.present.clear()
        for pod in body["items"]:
            self._apply("ADDED", pod)
        return str(body["metadata"]["resourceVersion"])

    async def _watch(self, version: str) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=300)
        while True:
            url = (f"{self.url}&watch=1&allowWatchBookmarks=true&timeoutSeconds=240"
                   f"&resourceVersion={version}")  # fmt: skip
            try:
                async with self.session.get(url, timeout=timeout) as r:
                    if r.status == 410:
                        version = await self._list()
                        continue
                    buffer = b""
                    async for chunk in r.content.iter_any():
                        buffer += chunk
                        *lines, buffer = buffer.split(b"\n")
                        for line in lines:
                            if line.strip():
                                version = await self._event(json.loads(line), version)
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.5)
            except Exception:  # a dead watch would leave every waiter waiting: say so, relist
                log.exception("the floor's pod watch failed; listing again")
                await asyncio.sleep(0.5)
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    version = await self._list()

    async def _event(self, event: dict[str, Any], version: str) -> str:
        obj = event.get("object") or {}
        if event.get("type") == "ERROR":
            return await self._list() if obj.get("code") == 410 else version
        version = str((obj.get("metadata") or {}).get("resourceVersion", version))
        if event.get("type") != "BOOKMARK":
            self._apply(str(event.get("type")), obj)
        return version

    def _apply(self, kind: str, pod: Mapping[str, Any]) -> None:
        name = str((pod.get("metadata") or {}).get("name"))
        if kind == "DELETED":
            self.present.pop(name, None)
            gone = self._gone.pop(name, None)
            if gone is not None and not gone.done():
                gone.set_result(None)
            return
        ip = self.present[name] = _ready_ip(pod)
        if ip is not None:
            ready = self._ready.pop(name, None)
            if ready is not None and not ready.done():
                ready.set_result(ip)

    async def wait_ready(self, name: str) -> str:
        ip = self.present.get(name)
        if ip is not None:
            return ip
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._ready[name] = future
        return await future

    async def wait_gone(self, name: str) -> None:
        if name not in self.present:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._gone[name] = future
        await future


class FloorContender:
    name = "floor"
    namespace = "storm-floor"
    selector = ",".join(f"{k}={v}" for k, v in FLOOR_LABELS.items())

    def __init__(self, s: StormSettings) -> None:
        self.s = s
        self.names: list[str] = []
        self.base = f"{s.server}/api/v1/namespaces/{self.namespace}/pods"
        self.session: aiohttp.ClientSession | None = None
        self.watch: PodWatch | None = None

    async def _open(self) -> tuple[aiohttp.ClientSession, PodWatch]:
        if self.session is None or self.watch is None:
            ctx = ssl.create_default_context(cafile=str(self.s.ca_path))
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=ctx, limit=FLOOR_CONNECTIONS),
                headers={"Authorization": f"Bearer {self.s.token}"},
                timeout=aiohttp.ClientTimeout(total=60),
            )
            self.watch = PodWatch(self.session, self.s.server, self.namespace, self.selector)
            await self.watch.start()
        return self.session, self.watch

    async def prepare(self, tag: str, n: int) -> None:
        await self._open()
        self.names = [f"floor-{tag}{i:04d}" for i in range(n)]

    def _pod(self, name: str) -> dict[str, Any]:
        resources = {"cpu": CPU, "memory": MEMORY}
        container = {
            "name": "notebook",
            "image": IMAGE,
            "args": ["jupyterhub-singleuser"],
            "ports": [{"name": "notebook-port", "containerPort": self.s.port}],
            "resources": {"requests": resources, "limits": resources},
        }
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": dict(FLOOR_LABELS)},
            "spec": {
                "containers": [container],
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
            },
        }

    async def _after_pod(self, session: aiohttp.ClientSession, pod: Mapping[str, Any]) -> None:
        """What is written once the pod exists (nothing, for the bare floor)."""

    async def spawn(self, i: int) -> None:
        session, watch = await self._open()
        name = self.names[i]
        async with session.post(self.base, json=self._pod(name)) as r:
            if r.status != 201:
                raise RuntimeError(f"POST pod {name}: {r.status} {await r.text()}")
            await self._after_pod(session, await r.json())
        ip = await asyncio.wait_for(watch.wait_ready(name), self.s.start_timeout)
        url = f"http://{ip}:{self.s.port}/user/{name}/"
        await wait_for_http_server(url, timeout=self.s.http_timeout)

    async def stop(self, i: int) -> None:
        session, watch = await self._open()
        name = self.names[i]
        async with session.delete(f"{self.base}/{name}") as r:
            if r.status not in (200, 202, 404):
                raise RuntimeError(f"DELETE pod {name}: {r.status} {await r.text()}")
        await self._after_delete(session, name)
        await asyncio.wait_for(watch.wait_gone(name), self.s.start_timeout)

    async def _after_delete(self, session: aiohttp.ClientSession, name: str) -> None:
        """What is deleted besides the pod (nothing, for the bare floor)."""

    async def close(self) -> None:
        if self.watch is not None:
            await self.watch.close()
        if self.session is not None:
            await self.session.close()
        self.session = self.watch = None


class SameObjectsFloor(FloorContender):
    """The floor writing the very objects AFSpawner writes: its Pod and its Secret, from
    ``policy.resolve`` + ``manifests.make_objects`` for the same facility and user (built
    before the storm, not timed), the Secret owned by the pod (``manifests.owned_by``),
    POSTed after it, deleted with it. What is left between this and AFSpawner is the
    spawner's own work (hub calls, admission, informers, progress), not what it creates."""

    name = "floor-same"
    namespace = "storm-floor-same"
    selector = "app.kubernetes.io/managed-by=jupyterhub-af"

    def __init__(self, s: StormSettings) -> None:
        super().__init__(s)
        self.secrets = f"{s.server}/api/v1/namespaces/{self.namespace}/secrets"
        self.objects: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}  # by pod name

    async def prepare(self, tag: str, n: int) -> None:
        from afspawner.loader import load_facility
        from afspawner.manifests import PodSettings, make_objects
        from afspawner.plan import UserIdentity
        from afspawner.policy import SpawnOptions, UserContext, resolve

        await self._open()
        fac = load_facility(FACILITY)
        self.objects, self.names = {}, []
        for i in range(n):
            user = f"{tag}{i:04d}"
            plan = resolve(
                fac,
                UserContext(user, frozenset(), ("storm",)),
                SpawnOptions("storm"),
                UserIdentity(user, 50001 + i, 50000),
            )
            env = {**_hub_env(user, self.s.port), "JUPYTERHUB_API_TOKEN": secrets.token_hex(16)}
            objs = make_objects(plan, PodSettings(self.namespace, self.s.port, hub_env=env))
            self.names.append(objs.pod["metadata"]["name"])
            self.objects[self.names[-1]] = (objs.pod, objs.secret)

    def _pod(self, name: str) -> dict[str, Any]:
        return self.objects[name][0]

    async def _after_pod(self, session: aiohttp.ClientSession, pod: Mapping[str, Any]) -> None:
        from afspawner.manifests import owned_by

        name = pod["metadata"]["name"]
        secret = owned_by(self.objects[name][1], pod)
        async with session.post(self.secrets, json=secret) as r:
            if r.status != 201:
                raise RuntimeError(f"POST secret {name}: {r.status} {await r.text()}")

    async def _after_delete(self, session: aiohttp.ClientSession, name: str) -> None:
        async with session.delete(f"{self.secrets}/{name}") as r:
            if r.status not in (200, 202, 404):
                raise RuntimeError(f"DELETE secret {name}: {r.status} {await r.text()}")


class SamePodFloor(SameObjectsFloor):
    """AFSpawner's Pod without its Secret (the pod still names it in ``envFrom``; kwok starts
    it regardless). Beside ``floor`` and ``floor-same`` it says which part of the cost of
    AFSpawner's objects is the pod's content and which the Secret's two writes."""

    name = "floor-pod"
    namespace = "storm-floor-pod"

    def _pod(self, name: str) -> dict[str, Any]:
        pod = json.loads(json.dumps(self.objects[name][0]))
        for part in filter(None, os.environ.get("STORM_POD_STRIP", "").split(",")):
            _strip(pod, part)
        return pod

    async def _after_pod(self, session: aiohttp.ClientSession, pod: Mapping[str, Any]) -> None:
        """No Secret."""

    async def _after_delete(self, session: aiohttp.ClientSession, name: str) -> None:
        """No Secret."""


def _strip(pod: dict[str, Any], part: str) -> None:
    """Experiment knob (``STORM_POD_STRIP=env,labels,...``): what each part of the pod costs."""
    spec, meta = pod["spec"], pod["metadata"]
    c = spec["containers"][0]
    if part == "env":
        c.pop("env", None)
        c.pop("envFrom", None)
    elif part == "security":
        spec.pop("securityContext", None)
    elif part == "labels":
        meta["labels"] = dict(list(meta["labels"].items())[:1])
    elif part == "annotations":
        meta.pop("annotations", None)
    elif part == "qos":
        c["resources"]["limits"] = dict(c["resources"]["requests"])
    elif part == "restart":
        spec.pop("restartPolicy", None)
    else:
        raise ValueError(f"STORM_POD_STRIP: unknown part {part!r}")


def _hub_env(user: str, port: int) -> dict[str, str]:
    """What ``Spawner.get_env`` hands a spawner for ``user`` (the token is added per spawn)."""
    prefix = f"/user/{user}/"
    return {
        "JUPYTERHUB_CLIENT_ID": f"jupyterhub-user-{user}",
        "JUPYTERHUB_HOST": "",
        "JUPYTERHUB_OAUTH_CALLBACK_URL": f"{prefix}oauth_callback",
        "JUPYTERHUB_OAUTH_SCOPES": f'["access:servers!server={user}/"]',
        "JUPYTERHUB_USER": user,
        "JUPYTERHUB_SERVER_NAME": "",
        "JUPYTERHUB_API_URL": "http://hub:8081/hub/api",
        "JUPYTERHUB_ACTIVITY_URL": f"http://hub:8081/hub/api/users/{user}/activity",
        "JUPYTERHUB_BASE_URL": "/",
        "JUPYTERHUB_SERVICE_PREFIX": prefix,
        "JUPYTERHUB_SERVICE_URL": f"http://0.0.0.0:{port}{prefix}",
    }
