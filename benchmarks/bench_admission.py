"""Quota admission and GPU availability per call at 100 / 1,000 / 10,000 running servers.

Three implementations side by side in one run, in rotating order within every round:

- ours: ``afspawner.quota.Ledger`` (running totals per VO and per user) and
  ``afspawner.capacity.GPUCounters`` (counters fed with informer changes);
- before: the previous algorithms, which walk every reservation (``SummingLedger``, kept in
  tests/unit/test_quota_totals.py as the reference of the property test) and every node and
  pod on each query (``capacity.gpu_capacity`` over the informers' stores, as the old
  ``KubernetesBackend.gpu_free`` did, copies of ``values()`` included);
- floor: the least such a call can do: a dict lookup and an int compare (plus, for
  admission, inserting and removing the reservation).

Admission: ``admit`` of one more server then its ``release`` (the ledger keeps its size), in a
facility of 4 VOs with totals that never refuse. GPU availability: free units of one class
over ~100 nodes (40 with 8 GPUs, 60 CPU-only) and N server pods (1 in 20 asks for a GPU, some
pending). Also measured: what one pod change costs the counters (the price paid on the
informer's side instead of on each query).

Timing: ``timeit`` with ``time.process_time``; per call, the median (and best) of --repeat
rounds. Ratio: µs at the largest N over µs at the smallest.

    .venv/bin/python benchmarks/bench_admission.py [--repeat 7] [--sizes 100,1000,10000]
"""

from __future__ import annotations

import argparse
import statistics
import time
import timeit
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import _common

_common.use_test_bed()

from afspawner.capacity import GPUCounters, gpu_capacity  # noqa: E402
from afspawner.facility import GPUClass  # noqa: E402
from afspawner.loader import load_facility  # noqa: E402
from afspawner.plan import GPURequest, LaunchPlan, UserIdentity  # noqa: E402
from afspawner.quota import Ledger, Reservation, Usage  # noqa: E402
from unit.test_quota_totals import SummingLedger  # noqa: E402  # the ledger before this change

VOS = ("cms", "atlas", "dune", "lhcb")
BIG = {"cpu": 10**6, "memory": "100Ti", "servers": 10**6, "gpus": {"t4": 10**5}}
FAC = load_facility(
    {
        "vos": {vo: {"quota": BIG, "per_user": {"servers": 100}} for vo in VOS},
        "gpu_classes": {"t4": {"resource": "nvidia.com/gpu", "selector": {"gpu": "t4"}}},
        "flavors": [{"name": "f", "vos": list(VOS), "image": "i", "cpu": 1, "memory": "1Gi"}],
    }
)
T4: GPUClass = FAC.gpu_classes["t4"]
GPU = "nvidia.com/gpu"
NODES, GPU_NODES, GPUS_PER_NODE = 100, 40, 8


def running(n: int) -> list[Reservation]:
    """``n`` servers of ~n/5 users spread over the VOs; 1 in 20 holds a GPU."""
    return [
        Reservation(
            f"u{i % max(n // 5, 1)}",
            f"s{i}",
            VOS[i % len(VOS)],
            Usage(1000, 2**31, 1, {"t4": 1} if i % 20 == 0 else {}),
        )
        for i in range(n)
    ]


NEW = LaunchPlan(
    "newcomer", "", "cms", "f", "i", 2000, 2**31, None, None,
    UserIdentity("newcomer", 1000, 1000), GPURequest("t4", GPU, 1),
)  # fmt: skip


def node(i: int) -> dict[str, Any]:
    gpu = i < GPU_NODES
    return {
        "metadata": {"name": f"node-{i}", "labels": {"gpu": "t4"} if gpu else {}},
        "spec": {},
        "status": {
            "allocatable": {"cpu": "64", "memory": "256Gi"}
            | ({GPU: str(GPUS_PER_NODE)} if gpu else {}),
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def pod(i: int) -> dict[str, Any]:
    """A server pod as the informer stores it (slim); 1 in 20 asks a GPU, 1 in 50 pending."""
    gpu = i % 20 == 0
    res: dict[str, Any] = {"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}
    if gpu:
        res["limits"][GPU] = res["requests"][GPU] = "1"
    spec: dict[str, Any] = {"containers": [{"name": "notebook", "resources": res}]}
    pending = i % 50 == 7
    if not pending:
        spec["nodeName"] = f"node-{(i // 20) % GPU_NODES if gpu else i % NODES}"
    return {
        "metadata": {"name": f"jupyter-u{i}", "namespace": f"af-{VOS[i % len(VOS)]}"},
        "spec": spec,
        "status": {"phase": "Pending" if pending else "Running"},
    }


def _asks_gpu(p: dict[str, Any]) -> bool:
    return any(GPU in c["resources"].get("limits", {}) for c in p["spec"]["containers"])


@dataclass
class Row:
    part: str
    impl: str
    servers: int
    us_median: float
    us_best: float
    calls_per_round: int


def measure(cases: dict[str, Callable[[], Any]], repeat: int) -> dict[str, list[float]]:
    """µs per call of each case, ``repeat`` rounds; every round runs all cases, order rotated."""
    timers, numbers = {}, {}
    for name, fn in cases.items():
        fn()  # warm-up
        timers[name] = timeit.Timer(fn, timer=time.process_time)
        numbers[name] = max(timers[name].autorange()[0], 3)
    per: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(repeat):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            per[name].append(timers[name].timeit(numbers[name]) / numbers[name] * 1e6)
    return {name: [*per[name], numbers[name]] for name in names}


def admission_cases(n: int) -> dict[str, Callable[[], Any]]:
    ours, before = Ledger(), SummingLedger()
    ours.restore(running(n))
    before.restore(running(n))
    totals = {vo: ours.usage(vo).cpu_millis for vo in VOS}
    limit = FAC.vos["cms"].quota.cpu_millis or 0
    floor_reservations = {r.key: r for r in running(n)}
    one = Reservation("newcomer", "", "cms", Usage(2000, 2**31, 1, {"t4": 1}))

    def admit_release(ledger: Ledger | SummingLedger) -> Callable[[], Any]:
        def call() -> None:
            ledger.admit(FAC, NEW)
            ledger.release("newcomer", "")

        return call

    def floor() -> None:
        if totals["cms"] + 2000 <= limit:
            floor_reservations["newcomer/"] = one
        del floor_reservations["newcomer/"]

    return {"ours": admit_release(ours), "before": admit_release(before), "floor": floor}


def gpu_cases(n: int) -> tuple[dict[str, Callable[[], Any]], Callable[[], Any], dict[str, Any]]:
    nodes = {f"node-{i}": node(i) for i in range(NODES)}
    pods = {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p for p in map(pod, range(n))}
    counters = GPUCounters([T4])
    for obj in nodes.values():
        counters.node_changed("ADDED", obj)
    for obj in pods.values():
        counters.pod_changed("ADDED", obj)
    want = gpu_capacity(T4, nodes.values(), pods.values())
    assert counters.capacity("t4") == want, (counters.capacity("t4"), want)
    free = {"t4": counters.available("t4")}

    def ours() -> int:
        return counters.available("t4")

    def before() -> int:  # the previous KubernetesBackend.gpu_free
        cap = gpu_capacity(T4, list(nodes.values()), list(pods.values()))
        return max(cap.total - cap.used - cap.pending, 0)

    def floor() -> bool:
        return free["t4"] > 0

    assert ours() == before()
    gpu_pod = pod(0)  # bound, asks one GPU
    assert "nodeName" in gpu_pod["spec"] and _asks_gpu(gpu_pod)
    flip = [{**gpu_pod, "status": {"phase": "Succeeded"}}, gpu_pod]

    def one_change() -> None:  # a pod going Succeeded and back: two MODIFIED events
        for obj in flip:
            counters.pod_changed("MODIFIED", obj)

    facts = {"nodes": NODES, "gpu_nodes": GPU_NODES, "gpus": want.total, "capacity": asdict(want)}
    return {"ours": ours, "before": before, "floor": floor}, one_change, facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timeit rounds (7)")
    parser.add_argument("--sizes", default="100,1000,10000", help="running servers")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    data = _common.header("bench_admission")
    rows: list[Row] = []
    gpu_facts: dict[int, Any] = {}
    for n in sizes:
        for part, cases in (("admission", admission_cases(n)), ("gpu_free", None)):
            extra: dict[str, Callable[[], Any]] = {}
            if cases is None:
                cases, change, gpu_facts[n] = gpu_cases(n)
                extra = {"ours (per pod change)": change}
            for impl, per in measure(cases | extra, args.repeat).items():
                *times, number = per
                if impl == "ours (per pod change)":
                    times = [t / 2 for t in times]  # two events per call
                rows.append(Row(part, impl, n, statistics.median(times), min(times), int(number)))
                print(f"  {part:10} {impl:22} {n:>6} {rows[-1].us_median:10.2f} µs", flush=True)

    def us(part: str, impl: str, n: int) -> float:
        return next(r.us_median for r in rows if (r.part, r.impl, r.servers) == (part, impl, n))

    lo, hi = sizes[0], sizes[-1]
    heads = ["part", "impl", *(f"µs at {n:,}" for n in sizes), f"ratio {hi:,}/{lo:,}"]
    table_rows = []
    ratios: dict[str, dict[str, float]] = {}
    for part in ("admission", "gpu_free"):
        impls = dict.fromkeys(r.impl for r in rows if r.part == part)
        for impl in impls:
            ratio = us(part, impl, hi) / us(part, impl, lo)
            ratios.setdefault(part, {})[impl] = round(ratio, 2)
            table_rows.append([part, impl, *(us(part, impl, n) for n in sizes), ratio])
    targets = {
        "admission_us_at_largest": round(us("admission", "ours", hi), 2),
        "gpu_free_us_at_largest": round(us("gpu_free", "ours", hi), 2),
        "target_us": 50,
    }
    summary = (
        "CPU time (process_time) per call, median of "
        f"{args.repeat} rounds, ours / before (O(n) walk) / floor side by side. Admission = "
        "Ledger.admit + release of one more server; gpu_free = free units of one class over "
        f"{NODES} nodes ({GPU_NODES} with {GPUS_PER_NODE} GPUs) and the N server pods; "
        "'per pod change' = what one informer change costs the counters.\n\n"
        + _common.table(heads, table_rows)
        + f"\n\nTargets (issue 9): admission and gpu_free < 50 µs at 10,000 servers: ours "
        f"{targets['admission_us_at_largest']} µs and {targets['gpu_free_us_at_largest']} µs "
        f"at {hi:,}."
    )
    print(summary)
    data.update(
        parameters={"repeat": args.repeat, "sizes": sizes, "vos": len(VOS)},
        gpu_setup=gpu_facts,
        results=[asdict(r) for r in rows],
        ratios=ratios,
        targets=targets,
    )
    for path in _common.write("bench_admission", data, summary):
        print("wrote", path.relative_to(_common.ROOT))


if __name__ == "__main__":
    main()
