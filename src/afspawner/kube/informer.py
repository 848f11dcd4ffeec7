"""Shared informers: LIST + WATCH with resourceVersion and bookmarks, re-LIST only on 410.

One informer per (client, resource path, selector) per hub process, shared by every spawner.
It never gives up: connection errors are retried with capped backoff (reset on reconnect), an
expired resourceVersion (410 Gone) triggers a fresh LIST, and listeners see every change.

Changes are dispatched by key, so the cost of a change does not grow with the number of spawns
in flight: :meth:`Informer.watch_key` listeners and :meth:`Informer.wait_key` waiters are called
only for their own object (events are keyed by the object they are about through ``index``).
Broadcast listeners (:meth:`Informer.add_listener`) are for the few global consumers (capacity).
Objects are slimmed by ``transform`` before they are stored or emitted (:mod:`.slim`), and the
loop is yielded between LIST pages and every :data:`YIELD_EVERY` changes of a burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import orjson
from kubernetes_asyncio import client

from afspawner.kube.client import KubeError, request, stream
from afspawner.kube.slim import Transform, without_managed_fields

log = logging.getLogger("afspawner.informer")
Listener = Callable[[str, dict[str, Any]], None]
Index = Callable[[dict[str, Any]], str | None]
WATCH_SECONDS = 240
# Retry delays after a failed LIST or WATCH: doubled per failure, reset once a LIST succeeds or
# a WATCH connects, so a second apiserver outage is retried as quickly as the first.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 8.0
# Objects per LIST page: a page is decoded on the event loop (json holds the GIL, so a thread
# would not free the loop), and 100 pods decode in a few milliseconds.
PAGE_SIZE = 100
YIELD_EVERY = 50  # changes handled between two yields to the event loop


def object_key(obj: Mapping[str, Any]) -> str:
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


def _remove(registry: dict[str, list[Any]], key: str, item: Any) -> None:
    items = registry.get(key)
    if items is not None and item in items:
        items.remove(item)
        if not items:
            del registry[key]


class Informer:
    """A local cache of one kind of object, kept current by a watch."""

    def __init__(
        self,
        api: client.ApiClient,
        path: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        watch_seconds: int = WATCH_SECONDS,
        *,
        index: Index | None = None,
        transform: Transform | None = None,
        keep: bool = True,
    ) -> None:
        self.api = api
        # keep=False: dispatch only, store nothing (Pod events: read by the spawns that listen
        # for them as they come, never looked up later; a busy namespace has thousands)
        self.keep = keep
        self.path = path
        self.watch_seconds = watch_seconds
        self.selectors = {
            k: v
            for k, v in (("labelSelector", label_selector), ("fieldSelector", field_selector))
            if v
        }
        self.index: Index = index or object_key
        self.transform: Transform = transform or without_managed_fields
        self.store: dict[str, dict[str, Any]] = {}
        self.resource_version = ""
        self.lists = 0  # how many LISTs were made (1 + one per 410 or failure)
        self.last_error: str | None = None
        self._listeners: list[Listener] = []
        self._keyed: dict[str, list[Listener]] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._any: list[asyncio.Future[None]] = []
        self._synced = asyncio.Event()
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
        """Call ``listener(kind, obj)`` for every change (kinds ADDED/MODIFIED/DELETED/SYNC)."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def watch_key(self, key: str, listener: Listener) -> Callable[[], None]:
        """Call ``listener(kind, obj)`` for changes of the objects whose ``index`` is ``key``."""
        self._keyed.setdefault(key, []).append(listener)
        return lambda: _remove(self._keyed, key, listener)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.store.get(key)

    async def wait_key(
        self, key: str, predicate: Callable[[dict[str, Any] | None], bool]
    ) -> dict[str, Any] | None:
        """The stored object of ``key`` (or ``None``) once ``predicate`` holds for it.

        Re-checked only when that object changes (bound it with ``asyncio.timeout``).
        """
        while True:
            obj = self.store.get(key)
            if predicate(obj):
                return obj
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(key, []).append(waiter)
            try:
                await waiter
            finally:
                _remove(self._waiters, key, waiter)

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; re-checked after every change (not for hot paths:
        use :meth:`wait_key`)."""
        while not predicate():
            waiter = asyncio.get_running_loop().create_future()
            self._any.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._any:
                    self._any.remove(waiter)

    def values(self) -> list[dict[str, Any]]:
        return list(self.store.values())

    def apply(self, kind: str, raw: dict[str, Any]) -> None:
        """One watch change (ADDED/MODIFIED/DELETED): store the slim object, then dispatch it."""
        obj = self.transform(raw)
        key = object_key(obj)
        if kind == "DELETED":
            self.store.pop(key, None)
        elif self.keep:
            self.store[key] = obj
        self._emit(kind, obj, key)

    async def replace(self, items: list[dict[str, Any]]) -> None:
        """A LIST's result (already slim): swap the store, then report DELETED and SYNC."""
        new = {object_key(obj): obj for obj in items}
        old, self.store = self.store, (new if self.keep else {})
        done = 0
        for key, obj in old.items():
            if key not in new:
                self._emit("DELETED", obj, key)
                done = await _tick(done)
        for key, obj in new.items():
            self._emit("SYNC", obj, key)
            done = await _tick(done)

    # -- internals ---------------------------------------------------------------------------
    def _emit(self, kind: str, obj: dict[str, Any], key: str) -> None:
        for listener in self._listeners_of(obj):
            try:
                listener(kind, obj)
            except Exception:
                log.exception("informer listener failed for %s", self.path)
        for waiter in self._waiters.pop(key, ()):
            if not waiter.done():
                waiter.set_result(None)
        if self._any:
            woken, self._any = self._any, []
            for waiter in woken:
                if not waiter.done():
                    waiter.set_result(None)

    def _listeners_of(self, obj: dict[str, Any]) -> Iterator[Listener]:
        yield from list(self._listeners)
        if self._keyed:
            ikey = self.index(obj)
            if ikey is not None and ikey in self._keyed:
                yield from list(self._keyed[ikey])

    async def _list(self) -> None:
        items: list[dict[str, Any]] = []
        query: dict[str, Any] = {**self.selectors, "limit": PAGE_SIZE}
        while True:
            page = await request(self.api, "GET", self.path, query)
            items += [self.transform(item) for item in page.get("items") or []]
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                break
            query["continue"] = cont
            await asyncio.sleep(0)  # let the hub serve requests between pages
        self.lists += 1
        self.resource_version = page["metadata"]["resourceVersion"]
        await self.replace(items)
        self._synced.set()

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
        done = 0
        try:
            async for line in _lines(resp):
                event = orjson.loads(line)  # ~3x faster than json: every pod change
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
                self.apply(str(kind), obj)
                done = await _tick(done)  # a burst arrives without the stream ever waiting
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


class NamespacedInformers:
    """One informer per namespace, read as one: lookups go to the informer of the key's namespace.

    Watching only the namespaces servers run in keeps LISTs off the cluster-wide index (etcd
    load, cluster-scoped RBAC). Keys are ``namespace/name``; a key in a namespace that is not
    watched has no object.
    """

    def __init__(self, members: Mapping[str, Informer]) -> None:
        self.members = dict(members)
        self.store: Mapping[str, dict[str, Any]] = _UnionStore(self.members)

    def _member(self, key: str) -> Informer | None:
        ns, sep, _ = key.partition("/")
        return self.members.get(ns) if sep else None

    def get(self, key: str) -> dict[str, Any] | None:
        member = self._member(key)
        return member.store.get(key) if member is not None else None

    def values(self) -> list[dict[str, Any]]:
        return [obj for member in self.members.values() for obj in member.store.values()]

    async def wait_synced(self) -> None:
        await asyncio.gather(*(m.wait_synced() for m in self.members.values()))

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        stops = [m.add_listener(listener) for m in self.members.values()]

        def unsubscribe() -> None:
            for stop in stops:
                stop()

        return unsubscribe

    def watch_key(self, key: str, listener: Listener) -> Callable[[], None]:
        member = self._member(key)
        return member.watch_key(key, listener) if member is not None else lambda: None

    async def wait_key(
        self, key: str, predicate: Callable[[dict[str, Any] | None], bool]
    ) -> dict[str, Any] | None:
        member = self._member(key)
        if member is not None:
            return await member.wait_key(key, predicate)
        while not predicate(None):  # nothing of an unwatched namespace ever changes
            await asyncio.Event().wait()
        return None


class _UnionStore(Mapping[str, dict[str, Any]]):
    """The stores of several namespace informers as one read-only mapping."""

    def __init__(self, members: Mapping[str, Informer]) -> None:
        self._members = members

    def __getitem__(self, key: str) -> dict[str, Any]:
        ns, _, _ = key.partition("/")
        member = self._members.get(ns)
        if member is None:
            raise KeyError(key)
        return member.store[key]

    def __iter__(self) -> Iterator[str]:
        for member in list(self._members.values()):
            yield from list(member.store)

    def __len__(self) -> int:
        return sum(len(m.store) for m in self._members.values())


async def _tick(done: int) -> int:
    """Count one handled change; yield to the event loop every :data:`YIELD_EVERY`."""
    done += 1
    if done % YIELD_EVERY == 0:
        await asyncio.sleep(0)
    return done


_shared: dict[tuple[int, str, str], Informer] = {}


def shared_informer(
    api: client.ApiClient,
    path: str,
    label_selector: str | None = None,
    field_selector: str | None = None,
    *,
    index: Index | None = None,
    transform: Transform | None = None,
    keep: bool = True,
) -> Informer:
    """The process-wide informer for this client, path and selectors (started on first use).

    ``index``, ``transform`` and ``keep`` are those of the first caller (one path, one use).
    """
    key = (id(api), path, f"{label_selector}|{field_selector}")
    informer = _shared.get(key)
    if informer is None:
        informer = _shared[key] = Informer(
            api,
            path,
            label_selector,
            field_selector,
            index=index,
            transform=transform,
            keep=keep,
        )
    informer.start()
    return informer


async def stop_shared_informers() -> None:
    for informer in list(_shared.values()):
        await informer.stop()
    _shared.clear()
