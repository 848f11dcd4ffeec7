"""Instruments and test-bed plumbing of the spawn storm (``bench_spawn_storm.py``).

- :class:`Ticker`: event-loop lag, a coroutine sleeping 10 ms at a time;
- :class:`RequestCounter`: every HTTP request the benchmark process (the hub) sends through
  aiohttp, by verb and resource: kubernetes-asyncio (AFSpawner, KubeSpawner), the floor and
  JupyterHub's readiness check (``wait_for_http_server``) all go through aiohttp;
- :func:`apiserver_requests`: ``apiserver_request_total`` from the apiserver's ``/metrics``,
  summed by verb and resource (every client: hub, scheduler, kwok, controllers);
- :class:`ProcessCPU`: CPU time of the control plane's processes and the stub;
- :class:`Stub`: ``storm_stub.py`` in its own process, the notebook servers;
- the hub stand-ins a spawner object needs without a hub (:class:`HubStandIn`,
  :class:`UserStandIn`), and namespace set-up and clean-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import httpx

HERE = Path(__file__).resolve().parent
TICK = 0.010


class Ticker:
    """How late a 10 ms sleep wakes up: the delay any other hub request would see."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="storm ticker")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(TICK)
            self.lags.append(max(loop.time() - before - TICK, 0.0))

    async def stop(self) -> list[float]:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.lags


class GCPauses:
    """Python's garbage-collector passes while a storm runs: how long the loop was held by them
    (a full pass over a large heap stops every coroutine, ours or not)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []  # (generation, seconds)
        self.freed: list[int] = []  # objects each full pass found unreachable
        self._began = self._began_cpu = 0.0
        self.cpu: list[float] = []  # CPU seconds of each full pass (the rest: waiting for a core)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began, self._began_cpu = time.perf_counter(), time.thread_time()
        else:
            self.pauses.append((int(info["generation"]), time.perf_counter() - self._began))
            if info["generation"] == 2:
                self.freed.append(int(info["collected"]))
                self.cpu.append(time.thread_time() - self._began_cpu)

    def start(self) -> None:
        gc.callbacks.append(self._callback)

    def stop(self) -> dict[str, float]:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        full = [s for g, s in self.pauses if g == 2]
        return {
            "passes": len(self.pauses),
            "full_passes": len(full),
            "total_ms": sum(s for _, s in self.pauses) * 1000,
            "max_ms": max((s for _, s in self.pauses), default=0.0) * 1000,
            "full_freed_max": max(self.freed, default=0),
            "full_cpu_max_ms": max(self.cpu, default=0.0) * 1000,
        }


def request_key(verb: str, resource: str, subresource: str = "") -> str:
    """``POST pods``, ``PATCH pods/status``, ``WATCH events``: the apiserver's own verbs."""
    return f"{verb} {resource}/{subresource}" if subresource else f"{verb} {resource}"


def classify(method: str, url: str, api_netloc: str) -> tuple[str, str]:
    """(namespace, verb and resource) of an apiserver request: namespace ``""`` when cluster
    scoped; ``("", "HTTP readiness")`` for the rest (the hub's checks of pod IPs)."""
    parts = urlsplit(url)
    if parts.netloc != api_netloc:
        return "", "HTTP readiness" if str(parts.hostname).startswith("127.") else "HTTP"
    segments = [s for s in parts.path.split("/") if s]
    if segments[:1] == ["api"]:
        segments = segments[2:]  # api/v1
    elif segments[:1] == ["apis"]:
        segments = segments[3:]  # apis/<group>/<version>
    else:
        return "", f"{method.upper()} {parts.path}"  # /metrics, /readyz: not a resource
    namespace = ""
    if len(segments) >= 3 and segments[0] == "namespaces":
        namespace, segments = segments[1], segments[2:]
    resource = segments[0] if segments else ""
    named = len(segments) > 1
    subresource = segments[2] if len(segments) > 2 else ""
    verb = method.upper()
    query = parse_qs(parts.query)
    if verb == "GET":
        if query.get("watch", ["false"])[0] in ("1", "true"):
            verb = "WATCH"
        elif not named:
            verb = "LIST"
    elif verb == "DELETE" and not named:
        verb = "DELETECOLLECTION"
    return namespace, request_key(verb, resource, subresource)


class RequestCounter:
    """Counts the requests of this process by wrapping ``aiohttp.ClientSession._request``.

    ``ClientSession.request``/``get``/``post`` and kubernetes-asyncio's REST client all go
    through that one coroutine, so nothing is missed and nothing is changed.
    """

    def __init__(self, api_server: str) -> None:
        self.api_netloc = urlsplit(api_server).netloc
        self.counts: Counter[tuple[str, str]] = Counter()
        self._original: Any = None

    def install(self) -> None:
        if self._original is not None:
            return
        original = aiohttp.ClientSession._request
        counter = self

        async def _request(
            session: aiohttp.ClientSession, method: str, str_or_url: Any, **kwargs: Any
        ) -> aiohttp.ClientResponse:
            counter.counts[classify(method, str(str_or_url), counter.api_netloc)] += 1
            response: aiohttp.ClientResponse = await original(session, method, str_or_url, **kwargs)
            return response

        self._original = original
        aiohttp.ClientSession._request = _request  # type: ignore[method-assign,assignment]

    def uninstall(self) -> None:
        if self._original is not None:
            aiohttp.ClientSession._request = self._original  # type: ignore[method-assign]
            self._original = None

    def take(self, namespace: str = "") -> tuple[Counter[str], Counter[str]]:
        """The counts since the last ``take`` (then from zero again), split in two: requests
        in ``namespace`` or cluster scoped, and requests in other namespaces."""
        mine: Counter[str] = Counter()
        others: Counter[str] = Counter()
        for (ns, key), count in self.counts.items():
            (mine if ns in ("", namespace) else others)[key] += count
        self.counts = Counter()
        return mine, others


_METRIC = re.compile(r"^apiserver_request_total\{([^}]*)\} (\S+)$", re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def parse_apiserver_requests(text: str) -> Counter[str]:
    """``apiserver_request_total`` summed over codes and versions, by verb and resource."""
    totals: Counter[str] = Counter()
    for labels_text, value in _METRIC.findall(text):
        labels = dict(_LABEL.findall(labels_text))
        if labels.get("resource"):
            key = request_key(labels["verb"], labels["resource"], labels.get("subresource", ""))
            totals[key] += int(float(value))
    return totals


async def apiserver_requests(kube: httpx.AsyncClient) -> Counter[str] | None:
    """The apiserver's request counters now; ``None`` if it did not answer three times."""
    for attempt in range(3):
        try:
            r = await kube.get("/metrics")
            r.raise_for_status()
            return parse_apiserver_requests(r.text)
        except httpx.HTTPError:
            await asyncio.sleep(2**attempt)
    return None


def per_op(counts: Mapping[str, float], ops: int) -> dict[str, float]:
    """Counts divided by the number of spawns (or stops), largest first, zeros dropped."""
    if ops <= 0:
        return {}
    return {k: round(v / ops, 3) for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if v}


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc``); 0 where unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# -- the hub's part of a spawner's world ----------------------------------------------------
class HubStandIn:
    """What spawners read from ``spawner.hub``."""

    public_host = ""
    url = "http://127.0.0.1:8081/hub/"
    base_url = "/hub/"
    api_url = "http://127.0.0.1:8081/hub/api"


class UserStandIn:
    """What spawners read from ``spawner.user`` (a JupyterHub ``User``), with no database:
    such a spawner starts no sweep of its own (a hub in service would sweep every 30 s)."""

    def __init__(self, name: str, uid: int, auth_state: Mapping[str, Any]) -> None:
        self.name = self.escaped_name = name
        self.id = uid
        self.url = f"/user/{name}/"
        self.base_url = self.url
        self.admin = False
        self.groups: list[Any] = []
        self.auth_state = dict(auth_state)

    async def get_auth_state(self) -> dict[str, Any]:
        return self.auth_state

    def progress_url(self, server_name: str = "") -> str:
        return f"/hub/api/users/{self.name}/server/progress"


# -- the other processes' CPU -----------------------------------------------------------------
IDLE, STEAL = "(idle)", "(steal)"  # machine-wide, not processes: kept apart in the report


class ProcessCPU:
    """CPU seconds (user + system) of the processes beside the hub: the control plane's
    (etcd, kube-apiserver, controller-manager, scheduler, kwok) and the notebook stub, read
    from ``/proc/<pid>/stat``. On a shared machine a storm's rate is bounded by the CPU all of
    them spend per spawn, not by the hub's alone."""

    TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)

    def snapshot(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pid in self.pids.items():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
            except OSError:
                continue  # not running (or not Linux): left out, not counted as zero
            fields = stat[stat.rindex(")") + 2 :].split()
            out[name] = (int(fields[11]) + int(fields[12])) / self.TICK  # utime, stime
        with contextlib.suppress(OSError, ValueError, IndexError):
            cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()
            out[IDLE] = (int(cpu[4]) + int(cpu[5])) / self.TICK  # idle + iowait, all cores
            out[STEAL] = int(cpu[8]) / self.TICK  # taken by the hypervisor for others
        return out

    async def settle(self, busy: float = 0.15, seconds: float = 60.0) -> float:
        """Wait until the other processes are quiet (together under ``busy`` of one core for
        two 1 s windows in a row, at most ``seconds``), so that a storm does not pay for the
        tail of the one before (kwok finishing deletions, the garbage collector's checks);
        the seconds waited."""
        began, quiet = time.monotonic(), 0
        before = self.snapshot()
        while quiet < 2 and time.monotonic() - began < seconds:
            await asyncio.sleep(1.0)
            after = self.snapshot()
            used = sum(after[k] - before[k] for k in after if k in before and k in self.pids)
            quiet = quiet + 1 if used < busy else 0
            before = after
        return time.monotonic() - began

    @staticmethod
    def per_op_ms(
        before: Mapping[str, float], after: Mapping[str, float], ops: int
    ) -> dict[str, float]:
        if not ops:
            return {}
        return {k: round((after[k] - before[k]) * 1000 / ops, 3) for k in after if k in before}


# -- notebook servers -----------------------------------------------------------------------
class Stub:
    """``storm_stub.py`` in its own session (process group), stopped with it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "storm_stub.py"), str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != b"ready":
            raise RuntimeError(f"storm_stub.py did not start (exit code {self.proc.poll()})")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


# -- namespaces -----------------------------------------------------------------------------
def kube_client(server: str, ca_path: Path, token: str) -> httpx.AsyncClient:
    """The benchmark's own apiserver client (set-up, clean-up, metrics), not through aiohttp,
    so the :class:`RequestCounter` does not see it."""
    return httpx.AsyncClient(
        base_url=server,
        verify=ssl.create_default_context(cafile=str(ca_path)),
        timeout=60,
        headers={"Authorization": f"Bearer {token}"},
    )


async def _until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await check():
        if loop.time() > deadline:
            raise TimeoutError(f"{what} after {seconds:.0f}s")
        await asyncio.sleep(0.5)


async def ensure_namespace(kube: httpx.AsyncClient, name: str) -> None:
    """Create the namespace (if needed) and wait for its default ServiceAccount."""
    r = await kube.post("/api/v1/namespaces", json={"metadata": {"name": name}})
    if r.status_code not in (201, 409):
        raise RuntimeError(f"creating namespace {name}: {r.status_code} {r.text}")

    async def has_account() -> bool:
        sa = await kube.get(f"/api/v1/namespaces/{name}/serviceaccounts/default")
        return sa.status_code == 200

    await _until(has_account, 60, f"no default ServiceAccount in {name}")


async def count_pods(kube: httpx.AsyncClient, namespace: str, limit: int = 0) -> int:
    """Pods in the namespace (at most ``limit`` of them counted, if given)."""
    query = f"?limit={limit}" if limit else ""
    r = await kube.get(f"/api/v1/namespaces/{namespace}/pods{query}")
    r.raise_for_status()
    return len(r.json()["items"])


async def clear_namespace(kube: httpx.AsyncClient, namespace: str, seconds: float) -> int:
    """Delete every pod and Secret left in the namespace; wait until no pod is left.

    Returns how many pods were still there (spawns that failed or never returned).
    """
    left = await count_pods(kube, namespace)
    body = {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0}
    for kind in ("pods", "secrets"):
        r = await kube.request("DELETE", f"/api/v1/namespaces/{namespace}/{kind}", json=body)
        r.raise_for_status()

    async def empty() -> bool:
        return await count_pods(kube, namespace, limit=1) == 0

    await _until(empty, seconds, f"pods still in {namespace}")
    return left
