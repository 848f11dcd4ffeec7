"""Informer dispatch by key (no apiserver: changes are applied as the watch would apply them).

A change reaches the broadcast listeners, the keyed listeners of its index key and the waiters
of its object key, and nobody else: the cost of a change does not grow with the spawns in flight.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from afspawner.kube.informer import Informer, NamespacedInformers
from afspawner.kube.slim import involved_key


def _informer(**kw: Any) -> Informer:
    return Informer(None, "/api/v1/pods", **kw)  # type: ignore[arg-type]  # never started


def _pod(ns: str, name: str, phase: str = "Pending", rv: str = "1") -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": name, "uid": f"uid-{name}", "resourceVersion": rv},
        "status": {"phase": phase},
    }


def _event(ns: str, pod: str, uid: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": ns, "name": f"{pod}.{uid}", "uid": uid},
        "involvedObject": {"kind": "Pod", "namespace": ns, "name": pod},
        "reason": "Scheduled",
        "message": "ok",
    }


def test_keyed_listeners_see_only_their_key_and_broadcast_sees_all() -> None:
    inf = _informer()
    calls: Counter[str] = Counter()
    seen: list[tuple[str, str]] = []

    def counter(key: str) -> Any:
        return lambda kind, obj: calls.update([key])

    for i in range(50):
        inf.watch_key(f"ns/p{i}", counter(f"ns/p{i}"))
    inf.add_listener(lambda kind, obj: seen.append((kind, obj["metadata"]["name"])))
    for rv in range(3):
        for i in range(50):
            inf.apply("MODIFIED", _pod("ns", f"p{i}", rv=str(rv)))
    inf.apply("ADDED", _pod("other", "p1"))  # same name, another namespace: another key
    assert calls == {f"ns/p{i}": 3 for i in range(50)}
    assert len(seen) == 151 and seen[-1] == ("ADDED", "p1")


def test_unsubscribe_leaves_nothing_registered() -> None:
    inf = _informer()
    calls: list[str] = []
    stop = inf.watch_key("ns/a", lambda kind, obj: calls.append(kind))
    inf.apply("ADDED", _pod("ns", "a"))
    stop()
    stop()  # twice is harmless
    inf.apply("MODIFIED", _pod("ns", "a"))
    assert calls == ["ADDED"]
    assert inf._keyed == {}


def test_events_are_keyed_by_the_object_they_are_about() -> None:
    inf = _informer(index=involved_key)
    got: list[str] = []
    inf.watch_key("ns/jupyter-a", lambda kind, ev: got.append(ev["metadata"]["uid"]))
    inf.apply("ADDED", _event("ns", "jupyter-a", "e1"))
    inf.apply("ADDED", _event("ns", "jupyter-b", "e2"))
    inf.apply("MODIFIED", _event("ns", "jupyter-a", "e1"))
    assert got == ["e1", "e1"]
    assert set(inf.store) == {"ns/jupyter-a.e1", "ns/jupyter-b.e2"}  # stored by its own key


def test_a_failing_listener_does_not_stop_the_others() -> None:
    inf = _informer()
    got: list[str] = []

    def boom(kind: str, obj: dict[str, Any]) -> None:
        raise RuntimeError("listener bug")

    inf.add_listener(boom)
    inf.watch_key("ns/a", boom)
    inf.watch_key("ns/a", lambda kind, obj: got.append(kind))
    inf.apply("ADDED", _pod("ns", "a"))
    assert got == ["ADDED"]


def test_transform_applies_before_store_and_listeners() -> None:
    inf = _informer()  # default: drop managedFields
    got: list[dict[str, Any]] = []
    inf.add_listener(lambda kind, obj: got.append(obj))
    pod = _pod("ns", "a")
    pod["metadata"]["managedFields"] = [{"manager": "kubelet"}]
    inf.apply("ADDED", pod)
    assert "managedFields" not in inf.store["ns/a"]["metadata"]
    assert got == [inf.store["ns/a"]]


async def test_waiters_are_woken_only_by_their_own_object() -> None:
    inf = _informer()
    checks: Counter[str] = Counter()

    def running(key: str) -> Any:
        def check(pod: dict[str, Any] | None) -> bool:
            checks[key] += 1
            return pod is not None and pod["status"]["phase"] == "Running"

        return check

    keys = [f"ns/p{i}" for i in range(50)]
    waits = [asyncio.create_task(inf.wait_key(k, running(k))) for k in keys]
    await asyncio.sleep(0)
    assert checks == {k: 1 for k in keys}  # each checked once on entry
    for i in range(50):
        inf.apply("ADDED", _pod("ns", f"p{i}"))
        await asyncio.sleep(0)
    for i in range(50):
        inf.apply("MODIFIED", _pod("ns", f"p{i}", "Running", rv="2"))
        await asyncio.sleep(0)
    done = await asyncio.gather(*waits)
    assert [p["metadata"]["name"] for p in done if p] == [f"p{i}" for i in range(50)]
    assert checks == {k: 3 for k in keys}  # entry + its own two changes, nothing else
    assert inf._waiters == {}


async def test_wait_key_for_deletion_and_cancelled_waiters_are_forgotten() -> None:
    inf = _informer()
    inf.apply("ADDED", _pod("ns", "a"))
    gone = asyncio.create_task(inf.wait_key("ns/a", lambda pod: pod is None))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await inf.wait_key("ns/b", lambda pod: pod is not None)
    assert "ns/b" not in inf._waiters
    inf.apply("DELETED", _pod("ns", "a"))
    assert await gone is None
    assert inf._waiters == {}


async def test_relist_reports_deleted_and_sync_and_wakes_waiters() -> None:
    inf = _informer()
    inf.apply("ADDED", _pod("ns", "old"))
    kinds: list[tuple[str, str]] = []
    inf.add_listener(lambda kind, obj: kinds.append((kind, obj["metadata"]["name"])))
    gone = asyncio.create_task(inf.wait_key("ns/old", lambda pod: pod is None))
    await asyncio.sleep(0)
    await inf.replace([_pod("ns", "new")])
    assert kinds == [("DELETED", "old"), ("SYNC", "new")]
    assert await gone is None
    assert set(inf.store) == {"ns/new"}


async def test_a_large_relist_yields_to_the_event_loop() -> None:
    inf = _informer()
    ticks = 0
    during: list[int] = []

    async def other_work() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    inf.add_listener(lambda kind, obj: during.append(ticks))
    task = asyncio.create_task(other_work())
    await asyncio.sleep(0)
    await inf.replace([_pod("ns", f"p{i}") for i in range(500)])
    task.cancel()
    assert during[-1] > during[0] + 5  # the other task ran while the LIST was dispatched


async def test_wait_for_still_works_for_broadcast_predicates() -> None:
    inf = _informer()
    waiting = asyncio.create_task(inf.wait_for(lambda: len(inf.store) == 2))
    inf.apply("ADDED", _pod("ns", "a"))
    await asyncio.sleep(0)
    assert not waiting.done()
    inf.apply("ADDED", _pod("ns", "b"))
    await asyncio.wait_for(waiting, 1)


async def test_namespaced_informers_route_by_namespace() -> None:
    a, b = _informer(), _informer()
    group = NamespacedInformers({"ns-a": a, "ns-b": b})
    a.apply("ADDED", _pod("ns-a", "p"))
    b.apply("ADDED", _pod("ns-b", "q"))
    assert group.get("ns-a/p") is a.store["ns-a/p"]
    assert group.get("ns-b/p") is None and group.get("nowhere/p") is None
    assert group.get("no-namespace") is None
    assert dict(group.store) == {"ns-a/p": a.store["ns-a/p"], "ns-b/q": b.store["ns-b/q"]}
    assert "ns-b/q" in group.store and "ns-c/q" not in group.store and len(group.store) == 2
    assert sorted(p["metadata"]["name"] for p in group.values()) == ["p", "q"]

    keyed: list[str] = []
    everything: list[str] = []
    stop_keyed = group.watch_key("ns-b/q", lambda kind, obj: keyed.append(kind))
    stop_all = group.add_listener(lambda kind, obj: everything.append(obj["metadata"]["name"]))
    a.apply("MODIFIED", _pod("ns-a", "q"))  # same name in the other namespace
    b.apply("MODIFIED", _pod("ns-b", "q"))
    assert keyed == ["MODIFIED"] and everything == ["q", "q"]
    stop_keyed()
    stop_all()
    b.apply("MODIFIED", _pod("ns-b", "q"))
    assert keyed == ["MODIFIED"] and everything == ["q", "q"]

    running = asyncio.create_task(
        group.wait_key(
            "ns-a/p", lambda pod: pod is not None and pod["status"]["phase"] == "Running"
        )
    )
    await asyncio.sleep(0)
    a.apply("MODIFIED", _pod("ns-a", "p", "Running"))
    assert (await running)["status"]["phase"] == "Running"  # type: ignore[index]
    assert await group.wait_key("ns-c/x", lambda pod: pod is None) is None
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await group.wait_key("ns-c/x", lambda pod: pod is not None)  # never watched


async def test_a_dispatch_only_informer_stores_nothing_and_still_delivers() -> None:
    """Pod events: each spawn hears its pod's events as they come; nothing is kept for later."""
    inf = _informer(index=involved_key, keep=False)
    heard: list[tuple[str, str]] = []
    inf.watch_key("ns/p1", lambda kind, ev: heard.append((kind, ev["metadata"]["uid"])))
    for i in range(100):
        inf.apply("ADDED", _event("ns", f"p{i % 10}", f"e{i}"))
    assert inf.store == {} and inf.get("ns/p1.e1") is None
    assert heard == [("ADDED", f"e{i}") for i in range(1, 100, 10)]
    await inf.replace([_event("ns", "p1", "e100"), _event("ns", "p2", "e101")])  # a re-LIST
    assert inf.store == {}
    assert heard[-1] == ("SYNC", "e100") and len(heard) == 11
    keeping = _informer(index=involved_key)  # the default keeps every object
    keeping.apply("ADDED", _event("ns", "p1", "e1"))
    assert list(keeping.store) == ["ns/p1.e1"]
