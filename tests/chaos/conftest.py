"""Fixtures of the chaos suite: a real hub process per test, in its own namespace."""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from chaos.harness import RealHub, chaos_facility
from chaos.report import REPORT, ChaosReport
from integration.spawnkit import kube_http, new_namespace
from testbed.k8s import KubeCluster
from testbed.podstub import PodStub

HubFactory = Callable[..., Awaitable[RealHub]]


@pytest.fixture(scope="session")
def chaos_report() -> Iterator[ChaosReport]:
    yield REPORT
    path = REPORT.write()
    if path is not None:
        print(f"\nchaos figures written to {path}")


@pytest.fixture
async def chaos_hub(
    k8s_cluster: KubeCluster, pod_stub: PodStub, tmp_path: Path
) -> AsyncIterator[HubFactory]:
    """Factory: ``await chaos_hub({"vo": servers}, users)`` → a started RealHub whose users
    exist and belong to the hub group of the (single) VO. Every hub process, its proxy and
    its namespace are removed at teardown, whatever happened."""
    hubs: list[RealHub] = []
    namespaces: list[str] = []

    async def make(
        vos: Mapping[str, int],
        users: Iterable[str],
        backend: Mapping[str, Any] | None = None,
        spawner: Mapping[str, Any] | None = None,
    ) -> RealHub:
        names = list(users)
        ns = await new_namespace(k8s_cluster)
        namespaces.append(ns)
        workdir = Path(tempfile.mkdtemp(prefix="af-chaos-", dir=tmp_path))
        hub = RealHub(workdir, k8s_cluster, ns, chaos_facility(vos), names, spawner, backend)
        hubs.append(hub)
        await asyncio.to_thread(hub.start)
        [vo] = list(vos)
        await hub.create_users(names, vo)
        return hub

    try:
        yield make
    finally:
        for hub in hubs:
            await asyncio.to_thread(hub.stop)
        async with kube_http(k8s_cluster) as k:
            for ns in namespaces:
                with contextlib.suppress(Exception):
                    await k.delete(f"/api/v1/namespaces/{ns}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the figures of the scenarios that ran (also in benchmarks/results/chaos.json)."""
    if not REPORT.scenarios:
        return
    terminalreporter.section("chaos figures")
    for name, figures in REPORT.scenarios.items():
        terminalreporter.write_line(f"{name}: {json.dumps(figures, default=str)[:3000]}")
