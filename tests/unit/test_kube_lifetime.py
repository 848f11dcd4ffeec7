"""Shared informers and API clients are closed when the hub shuts down.

JupyterHub's shutdown (SIGTERM/SIGINT → ``JupyterHub.shutdown_cancel_tasks``, also what
pytest-jupyterhub's MockHub teardown awaits) runs its cleanup, then cancels every other task
of the loop and waits for them. That is the hook: run exactly that method here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from jupyterhub.app import JupyterHub

from afspawner.kube import client, informer
from afspawner.kube.lifetime import close_at_shutdown


class _FakeApi:
    closed = False

    async def close(self) -> None:
        self.closed = True


class _Hub:
    """What ``shutdown_cancel_tasks`` uses of the hub: cleanup, log, loop stop."""

    log = logging.getLogger("test-hub")
    stopped = False

    async def cleanup(self) -> None:
        return None

    def _stop_event_loop(self) -> None:
        self.stopped = True


async def _never_connects(self: informer.Informer) -> None:
    await asyncio.Event().wait()


def test_hub_shutdown_stops_informers_and_closes_clients(monkeypatch: Any) -> None:
    monkeypatch.setattr(informer.Informer, "_run", _never_connects)
    api = _FakeApi()
    hub = _Hub()

    async def hub_process() -> informer.Informer:
        client._clients["kubeconfig"] = api  # type: ignore[assignment]
        watched = informer.shared_informer(api, "/api/v1/pods")  # type: ignore[arg-type]
        close_at_shutdown()
        close_at_shutdown()  # idempotent: one guard per loop
        await asyncio.sleep(0)
        assert watched.running
        await JupyterHub.shutdown_cancel_tasks(hub)  # type: ignore[arg-type]
        return watched

    watched = asyncio.run(hub_process())
    assert hub.stopped and api.closed
    assert not watched.running
    assert client._clients == {} and informer._shared == {}
