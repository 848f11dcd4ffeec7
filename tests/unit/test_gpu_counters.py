"""GPUCounters, fed with informer changes, give exactly what gpu_capacity gives over the store."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from afspawner.capacity import GPUCounters, gpu_capacity
from afspawner.facility import GPUClass

GPU, MIG = "nvidia.com/gpu", "nvidia.com/mig-3g.20gb"
PRODUCT = "nvidia.com/gpu.product"


def gclass(name: str, resource: str, selector: dict[str, str]) -> GPUClass:
    return GPUClass(name, name, resource, "whole", selector, (), None, ())


CLASSES = (
    gclass("t4", GPU, {PRODUCT: "Tesla-T4"}),
    gclass("a100", GPU, {PRODUCT: "A100"}),
    gclass("any", GPU, {}),  # every node with the resource (overlaps the other two)
    gclass("mig", MIG, {PRODUCT: "A100", "mig": "on"}),
)
NODE_NAMES = ("n1", "n2", "n3")

quantities = st.sampled_from(["0", "1", "2", "4", "8", "1k", "bad", "-1"])
nodes = st.builds(
    lambda name, labels, alloc, ready, unschedulable: {
        "metadata": {"name": name, "labels": labels},
        "spec": {"unschedulable": True} if unschedulable else {},
        "status": {
            "allocatable": alloc,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    },
    st.sampled_from(NODE_NAMES),
    st.fixed_dictionaries(
        {}, optional={PRODUCT: st.sampled_from(["Tesla-T4", "A100"]), "mig": st.just("on")}
    ),
    st.dictionaries(st.sampled_from([GPU, MIG, "cpu"]), quantities, max_size=3),
    st.booleans(),
    st.booleans(),
)
resources = st.dictionaries(st.sampled_from([GPU, MIG, "cpu"]), quantities, max_size=2)
containers = st.lists(
    st.fixed_dictionaries({}, optional={"requests": resources, "limits": resources}).map(
        lambda r: {"name": "c", "resources": r}
    ),
    min_size=1,
    max_size=2,
)
pods = st.builds(
    lambda ns, name, node, phase, deleting, cs: {
        "metadata": {"namespace": ns, "name": name}
        | ({"deletionTimestamp": "2026-12-02T00:00:00Z"} if deleting else {}),
        "spec": {"containers": cs} | ({} if node is None else {"nodeName": node}),
        "status": {"phase": phase},
    },
    st.sampled_from(["af", "af-cms"]),
    st.sampled_from(["p1", "p2", "p3", "p4"]),
    st.none() | st.sampled_from([*NODE_NAMES, "elsewhere"]),
    st.sampled_from(["Pending", "Running", "Succeeded", "Failed"]),
    st.booleans(),
    containers,
)
kinds = st.sampled_from(["ADDED", "MODIFIED", "SYNC", "DELETED"])
events = st.lists(
    st.one_of(
        st.tuples(st.just("node"), kinds, nodes),
        st.tuples(st.just("pod"), kinds, pods),
        # a LIST re-sync: this is what the store holds afterwards
        st.tuples(st.just("relist-nodes"), st.just("SYNC"), st.lists(nodes, max_size=3)),
        st.tuples(st.just("relist-pods"), st.just("SYNC"), st.lists(pods, max_size=4)),
        st.tuples(st.just("late-start"), st.just("SYNC"), st.none()),
    ),
    max_size=30,
)


def key(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]


class Store:
    """An informer's store and the changes it emits (kube/informer.py's rules)."""

    def __init__(self, emit: Any) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.emit = emit

    def change(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            self.objects.pop(key(obj), None)
        else:
            self.objects[key(obj)] = obj
        self.emit(kind, obj)

    def relist(self, items: list[dict[str, Any]]) -> None:
        old, self.objects = self.objects, {key(o): o for o in items}
        for k, obj in old.items():
            if k not in self.objects:
                self.emit("DELETED", obj)
        for obj in self.objects.values():
            self.emit("SYNC", obj)


@settings(max_examples=400, deadline=None)
@given(events)
def test_counters_equal_gpu_capacity_over_the_store(sequence: list[Any]) -> None:
    counters = [GPUCounters(CLASSES)]

    def to_nodes(kind: str, obj: dict[str, Any]) -> None:
        for c in counters:
            c.node_changed(kind, obj)

    def to_pods(kind: str, obj: dict[str, Any]) -> None:
        for c in counters:
            c.pod_changed(kind, obj)

    node_store, pod_store = Store(to_nodes), Store(to_pods)
    for what, kind, obj in sequence:
        if what == "node":
            node_store.change(kind, obj)
        elif what == "pod":
            pod_store.change(kind, obj)
        elif what == "relist-nodes":
            node_store.relist(obj)
        elif what == "relist-pods":
            pod_store.relist(obj)
        else:  # counters started after the informers: seeded from their stores
            late = GPUCounters(CLASSES)
            late.seed(node_store.objects.values(), pod_store.objects.values())
            counters.append(late)
        for gc in CLASSES:
            want = gpu_capacity(gc, node_store.objects.values(), pod_store.objects.values())
            for c in counters:
                assert c.capacity(gc.name) == want
                assert c.available(gc.name) == max(want.total - want.used - want.pending, 0)


def test_a_pod_bound_before_its_node_is_seen_counts_once_the_node_is() -> None:
    t4 = CLASSES[0]
    counters = GPUCounters([t4])
    pod = {
        "metadata": {"namespace": "af", "name": "p"},
        "spec": {"nodeName": "n1", "containers": [{"resources": {"limits": {GPU: "2"}}}]},
        "status": {"phase": "Running"},
    }
    node = {
        "metadata": {"name": "n1", "labels": {PRODUCT: "Tesla-T4"}},
        "spec": {},
        "status": {"allocatable": {GPU: "4"}, "conditions": [{"type": "Ready", "status": "True"}]},
    }
    counters.pod_changed("ADDED", pod)
    assert counters.available("t4") == 0
    counters.node_changed("ADDED", node)
    assert (counters.capacity("t4").used, counters.available("t4")) == (2, 2)
    counters.node_changed("MODIFIED", node | {"spec": {"unschedulable": True}})
    assert counters.capacity("t4") == gpu_capacity(
        t4, [node | {"spec": {"unschedulable": True}}], [pod]
    )
    counters.pod_changed("MODIFIED", pod | {"status": {"phase": "Succeeded"}})
    counters.node_changed("MODIFIED", node)
    assert counters.available("t4") == 4
