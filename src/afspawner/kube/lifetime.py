"""Stop the shared informers and close the shared API clients when the hub shuts down.

JupyterHub calls nothing on spawner classes at shutdown (``cleanup`` stops servers only with
``cleanup_servers``). What it does on SIGTERM/SIGINT is ``shutdown_cancel_tasks``: after its
cleanup it cancels every other task of the event loop and waits for them. A guard task,
started on that loop with the first shared resource, turns that cancellation into an orderly
close: informers stopped, client sessions closed. pytest-jupyterhub's MockHub teardown does
the same, so each test hub releases them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from afspawner.kube.client import close_shared_clients
from afspawner.kube.informer import stop_shared_informers

log = logging.getLogger("afspawner.kube")
_guards: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}


async def close_shared() -> None:
    """Stop every shared informer, then close every shared API client."""
    await stop_shared_informers()
    await close_shared_clients()


async def _guard() -> None:
    try:
        await asyncio.Event().wait()  # until the hub cancels all tasks at shutdown
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await close_shared()
        log.info("stopped the shared Kubernetes informers and clients")
        raise
    finally:
        loop = asyncio.get_running_loop()
        if _guards.get(loop) is asyncio.current_task():
            del _guards[loop]


def close_at_shutdown() -> None:
    """Make sure the running loop closes the shared resources when its tasks are cancelled."""
    loop = asyncio.get_running_loop()
    guard = _guards.get(loop)
    if guard is None or guard.done():
        _guards[loop] = loop.create_task(_guard(), name="afspawner shutdown guard")
