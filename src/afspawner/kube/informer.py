"""Shared informers: LIST + WATCH with resourceVersion and bookmarks, re-LIST only on 410.

One informer per (client, resource path, selector) per hub process, shared by every spawner.
It never gives up: connection errors are retried with capped backoff (reset on reconnect), an
expired resourceVersion (410 Gone) triggers a fresh LIST, and listeners see every change.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from kubernetes_asyncio import client

from afspawner.kube.client import KubeError, request, stream

log = logging.getLogger("afspawner.informer")
Listener = Callable[[str, dict[str, Any]], None]
WATCH_SECONDS = 240
# Retry delays after a failed LIST or WATCH: doubled per failure, reset once a LIST succeeds or
# a WATCH connects, so a second apiserver outage is retried as quickly as the first.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 8.0


def object_key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


async def _lines(resp: Any) -> AsyncIterator[bytes]:
    """Newline-delimited chunks of a watch stream, of any length (objects can exceed 64 KiB)."""
    buffer = b""
    async for chunk in resp.content.iter_any():
        buffer += chunk
        *complete, buffer = buffer.split(b"\n")
        for line in complete:
            if line.strip():
                yield line
    if buffer.strip():
        yield buffer


class Informer:
    """A local cache of one kind of object, kept current by a watch."""

    def __init__(
        self,
        api: client.ApiClient,
        path: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        watch_seconds: int = WATCH_SECONDS,
    ) -> None:
        self.api = api
        self.path = path
        self.watch_seconds = watch_seconds
        self.selectors = {
            k: v
            for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector))
            if v
        }
        self.store: dict[str, dict[str, Any]] = {}
        self.resource_version = ""
        self.lists = 0  # how many LISTs were made (1 + one per 410 or failure)
        self.last_error: str | None = None
        self._listeners: list[Listener] = []
        self._synced = asyncio.Event()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._backoff = BACKOFF_FIRST

    # -- public ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"informer {self.path}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is re-checked after every change."""
        async with self._changed:
            await self._changed.wait_for(predicate)

    def values(self) -> list[dict[str, Any]]:
        return list(self.store.values())

    # -- internals ---------------------------------------------------------------------------
    def _emit(self, kind: str, obj: dict[str, Any]) -> None:
        for listener in list(self._listeners):
            try:
                listener(kind, obj)
            except Exception:
                log.exception("informer listener failed for %s", self.path)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _list(self) -> None:
        items: dict[str, dict[str, Any]] = {}
        query: dict[str, Any] = {**self.selectors, "limit": 500}
        while True:
            page = await request(self.api, "GET", self.path, query)
            for item in page.get("items") or []:
                items[object_key(item)] = item
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                break
            query["continue"] = cont
        self.lists += 1
        self.resource_version = page["metadata"]["resourceVersion"]
        old, self.store = self.store, items
        for key, obj in old.items():
            if key not in items:
                self._emit("DELETED", obj)
        for obj in items.values():
            self._emit("SYNC", obj)
        self._synced.set()
        await self._notify()

    async def _watch(self) -> bool:
        """Follow the watch until it ends; ``True`` when the resourceVersion is gone (410)."""
        query = {
            **self.selectors,
            "watch": "1",
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": self.watch_seconds,
        }
        resp = await stream(self.api, self.path, query, self.watch_seconds + 30)
        self._backoff = BACKOFF_FIRST  # connected: the next outage starts retrying quickly
        try:
            async for line in _lines(resp):
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return True
                    raise KubeError(int(obj.get("code") or 500), json.dumps(obj))
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    self.resource_version = rv
                if kind == "BOOKMARK":
                    continue
                key = object_key(obj)
                if kind == "DELETED":
                    self.store.pop(key, None)
                else:
                    self.store[key] = obj
                self._emit(str(kind), obj)
                await self._notify()
            return False
        finally:
            resp.release()

    async def _run(self) -> None:
        self._backoff = BACKOFF_FIRST
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    self._backoff = BACKOFF_FIRST
                    need_list = False
                gone = await self._watch()
                if gone:
                    log.info("informer %s: resourceVersion expired, re-listing", self.path)
                    need_list = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # connection reset, apiserver restart, bad JSON, 5xx
                if isinstance(exc, KubeError):
                    self.last_error = str(exc)
                    need_list = need_list or exc.status == 410
                else:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                delay = self._backoff
                log.warning("informer %s: %s; retrying in %.1fs", self.path, self.last_error, delay)
                await asyncio.sleep(delay)
                self._backoff = min(delay * 2, BACKOFF_MAX)


_shared: dict[tuple[int, str, str], Informer] = {}


def shared_informer(
    api: client.ApiClient,
    path: str,
    label_selector: str | None = None,
    field_selector: str | None = None,
) -> Informer:
    """The process-wide informer for this client, path and selectors (started on first use)."""
    key = (id(api), path, f"{label_selector}|{field_selector}")
    informer = _shared.get(key)
    if informer is None:
        informer = _shared[key] = Informer(api, path, label_selector, field_selector)
    informer.start()
    return informer


async def stop_shared_informers() -> None:
    for informer in list(_shared.values()):
        await informer.stop()
    _shared.clear()
