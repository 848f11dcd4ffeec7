"""Answers HTTP for kwok pods: kwok gives each pod a loopback IP (127.100.x.y); this stub
listens on each such IP as the pod appears, so the hub's readiness check reaches "the server".

It stands in for the notebook process inside the (simulated) container, not for Kubernetes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator

import httpx
import pytest

from testbed.k8s import KubeCluster

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    b"Connection: close\r\n\r\n{}"
)


class PodStub:
    def __init__(self, cluster: KubeCluster, port: int = 8888) -> None:
        self.cluster = cluster
        self.port = port
        self.servers: dict[str, asyncio.Server] = {}
        self.requests = 0
        self._task: asyncio.Task[None] | None = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            self.requests += 1
            writer.write(RESPONSE)
            await writer.drain()
        writer.close()

    async def _follow(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.cluster.ca_path))
        async with httpx.AsyncClient(
            base_url=self.cluster.server,
            verify=ctx,
            headers={"Authorization": f"Bearer {self.cluster.token}"},
        ) as client:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    pods = (await client.get("/api/v1/pods")).json()["items"]
                    for pod in pods:
                        ip = (pod.get("status") or {}).get("podIP")
                        if ip and ip.startswith("127.") and ip not in self.servers:
                            with contextlib.suppress(OSError):
                                self.servers[ip] = await asyncio.start_server(
                                    self._answer, ip, self.port
                                )
                await asyncio.sleep(0.1)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._follow())
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        for server in self.servers.values():
            server.close()
        self.servers.clear()

    def start(self) -> None:
        """Run in a thread with its own event loop: hub teardowns cancel their loop's tasks."""
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._main(),), name="pod-stub", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(10)


@pytest.fixture(scope="session")
def pod_stub(k8s_cluster: KubeCluster) -> Iterator[PodStub]:
    stub = PodStub(k8s_cluster)
    stub.start()
    yield stub
    stub.stop()
