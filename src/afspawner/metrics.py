"""Prometheus metrics of the spawner, served by the hub at ``/hub/metrics``.

JupyterHub registers its own metrics in ``prometheus_client``'s default registry and serves it;
the metrics here go there too, named ``jupyterhub_af_*`` (list and meaning: docs/operations.md).

- Events (spawn phases, outcomes, refusals, GPU queue waits) are counters and histograms,
  updated by :class:`afspawner.spawner.AFSpawner` through the small functions below.
- States (quota used and limits per VO, free GPUs, GPU queue lengths) are read from the live
  runtimes when Prometheus scrapes (:class:`FacilityCollector`), so they cost nothing per spawn
  and can never drift from the ledger the admission decides with.

Label values come from the facility file (VO, flavor and GPU class names of a resolved plan) or
from fixed lists in the code, never from what a user sent, so the number of series is bounded.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Literal, TypeVar

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from afspawner.admission import GPUAdmission
from afspawner.backends.base import Started
from afspawner.facility import Facility
from afspawner.plan import LaunchPlan
from afspawner.policy import Refusal
from afspawner.quota import Ledger, QuotaRefusal, Usage
from afspawner.runtime import Runtime, runtimes

PREFIX = "jupyterhub_af_"
#: Spawn phases in order; ``create`` is the launch time the platform's own timestamps do not
#: cover (API calls before the pod exists, and noticing that it is ready).
PHASES = ("admission", "gpu_wait", "create", "scheduling", "image_pull", "ready")
#: Seconds; past 2 minutes (slow image pulls, GPU waits) up to 10 minutes.
SPAWN_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 90, 120, 180, 240, 300, 450, 600)
#: GPU queue waits run up to ``gpu_queue_timeout`` (900 s by default).
GPU_WAIT_BUCKETS = (0.5, 1, 5, 10, 30, 60, 120, 300, 600, 900, 1800, 3600)

Outcome = Literal["success", "failure", "refused"]
#: Where a refusal happened in the spawn: the options, the POSIX identity, the policy, the
#: quota ledger or the GPU admission.
Stage = Literal["options", "identity", "policy", "quota", "gpu"]

PLAN_LABELS = ("vo", "flavor", "gpu_class")
LABELS: Mapping[str, tuple[str, ...]] = {
    PREFIX + "spawn_phase_duration_seconds": ("phase", *PLAN_LABELS),
    PREFIX + "spawns_total": ("outcome", "vo", "flavor"),
    PREFIX + "spawn_refusals_total": ("reason",),
    PREFIX + "gpu_queue_wait_seconds": ("gpu_class", "outcome"),
    PREFIX + "quota_used": ("vo", "resource", "gpu_class"),
    PREFIX + "quota_limit": ("vo", "resource", "gpu_class"),
    PREFIX + "gpus_free": ("gpu_class",),
    PREFIX + "gpu_queue_length": ("gpu_class",),
}

SPAWN_PHASE = Histogram(
    PREFIX + "spawn_phase_duration_seconds",
    "Seconds each phase of a spawn took (admission, gpu_wait, create, scheduling, image_pull, "
    "ready), by VO, flavor and GPU class",
    LABELS[PREFIX + "spawn_phase_duration_seconds"],
    buckets=SPAWN_BUCKETS,
)
SPAWNS = Counter(
    PREFIX + "spawns_total",
    "Spawns by outcome (success, failure, refused), VO and flavor ('' when not yet known)",
    LABELS[PREFIX + "spawns_total"],
)
REFUSALS = Counter(
    PREFIX + "spawn_refusals_total",
    "Refused spawns by reason (bad_option, no_identity, forbidden, quota, gpu_busy, gpu_timeout)",
    LABELS[PREFIX + "spawn_refusals_total"],
)
GPU_WAIT = Histogram(
    PREFIX + "gpu_queue_wait_seconds",
    "Seconds a GPU spawn waited for its units, by GPU class and outcome (granted, refused, "
    "timeout, cancelled)",
    LABELS[PREFIX + "gpu_queue_wait_seconds"],
    buckets=GPU_WAIT_BUCKETS,
)


# -- pure helpers ----------------------------------------------------------------------------
def plan_labels(plan: LaunchPlan | None) -> tuple[str, str, str]:
    """``(vo, flavor, gpu_class)`` of a plan; empty strings for what is not known."""
    if plan is None:
        return "", "", ""
    return plan.vo or "", plan.flavor, plan.gpu.gpu_class if plan.gpu else ""


def refusal_reason(exc: Refusal, stage: Stage, gpu_wait: str = "refuse") -> str:
    """The ``reason`` label of a refusal, from its class, status and where it happened."""
    if isinstance(exc, QuotaRefusal) or stage == "quota":
        return "quota"
    if stage == "gpu":
        return "gpu_busy" if gpu_wait == "refuse" else "gpu_timeout"
    if exc.status == 400:
        return "bad_option"
    if stage == "identity":
        return "no_identity"
    return "forbidden"


def launch_phases(total: float, reported: Mapping[str, float]) -> dict[str, float]:
    """The launch's phases: the backend's own (``scheduling``, ...) plus ``create``.

    ``create`` is the rest of the launch's wall time ``total``: what the backend's timestamps
    do not cover (creating the objects, noticing readiness); never negative.
    """
    known = {k: max(float(v), 0.0) for k, v in reported.items() if k in PHASES}
    known.pop("admission", None)
    known.pop("gpu_wait", None)
    create = known.pop("create", None)
    if create is None:
        create = max(total - sum(known.values()), 0.0)
    return {"create": create, **known}


# -- recording (called by the spawner) ------------------------------------------------------
def observe_phase(phase: str, plan: LaunchPlan, seconds: float) -> None:
    SPAWN_PHASE.labels(phase, *plan_labels(plan)).observe(max(seconds, 0.0))


def record_outcome(outcome: Outcome, plan: LaunchPlan | None = None) -> None:
    vo, flavor, _ = plan_labels(plan)
    SPAWNS.labels(outcome, vo, flavor).inc()


def record_refusal(reason: str, plan: LaunchPlan | None = None) -> None:
    REFUSALS.labels(reason).inc()
    record_outcome("refused", plan)


def observe_gpu_wait(gpu_class: str, outcome: str, seconds: float) -> None:
    GPU_WAIT.labels(gpu_class, outcome).observe(max(seconds, 0.0))


T = TypeVar("T")


@asynccontextmanager
async def timed_gpus(
    hold: AbstractAsyncContextManager[T], plan: LaunchPlan, wait_mode: str
) -> AsyncIterator[T]:
    """``hold`` (the GPU admission's ``gpus(...)``), timing the wait for its grant."""
    gpu_class = plan_labels(plan)[2]
    began = time.monotonic()
    async with AsyncExitStack() as stack:
        try:
            grant = await stack.enter_async_context(hold)
        except Refusal:
            outcome = "refused" if wait_mode == "refuse" else "timeout"
            observe_gpu_wait(gpu_class, outcome, time.monotonic() - began)
            raise
        except BaseException:
            observe_gpu_wait(gpu_class, "cancelled", time.monotonic() - began)
            raise
        waited = time.monotonic() - began
        observe_gpu_wait(gpu_class, "granted", waited)
        observe_phase("gpu_wait", plan, waited)
        yield grant


async def timed_launch(launch: Awaitable[Started], plan: LaunchPlan) -> Started:
    """Await the backend's launch; on success, observe its phases (:func:`launch_phases`)."""
    began = time.monotonic()
    started = await launch
    for phase, seconds in launch_phases(time.monotonic() - began, started.phases).items():
        observe_phase(phase, plan, seconds)
    return started


# -- states, read at scrape time ------------------------------------------------------------
@dataclass(frozen=True)
class QuotaSample:
    vo: str
    resource: str  # cpu (cores), memory (bytes), servers, gpus (of ``gpu_class``)
    gpu_class: str
    used: float
    limit: float | None  # ``None``: no limit


def quota_samples(facility: Facility, ledger: Ledger) -> list[QuotaSample]:
    """Use and limit of every VO of the facility, per resource (pure)."""
    found: list[QuotaSample] = []
    for name, vo in facility.vos.items():
        used: Usage = ledger.usage(name)
        limits = vo.quota
        cpu_limit = None if limits.cpu_millis is None else limits.cpu_millis / 1000
        found += [
            QuotaSample(name, "cpu", "", used.cpu_millis / 1000, cpu_limit),
            QuotaSample(name, "memory", "", float(used.memory_bytes), _num(limits.memory_bytes)),
            QuotaSample(name, "servers", "", float(used.servers), _num(limits.servers)),
        ]
        for gclass in sorted(set(limits.gpus) | set(used.gpus)):
            found.append(
                QuotaSample(
                    name,
                    "gpus",
                    gclass,
                    float(used.gpus.get(gclass, 0)),
                    _num(limits.gpus.get(gclass)),
                )
            )
    return found


def _num(value: int | None) -> float | None:
    return None if value is None else float(value)


def gpu_samples(facility: Facility, admission: GPUAdmission) -> list[tuple[str, int | None, int]]:
    """``(gpu class, free units or None, spawns waiting)`` for every GPU class (pure)."""
    return [
        (name, admission.available(name), admission.waiting(name))
        for name in sorted(facility.gpu_classes)
    ]


def _families() -> dict[str, GaugeMetricFamily]:
    def gauge(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(PREFIX + name, doc, labels=LABELS[PREFIX + name])

    return {
        "used": gauge(
            "quota_used",
            "What a VO's servers use now, per resource (cpu in cores, "
            "memory in bytes, servers, gpus per class)",
        ),
        "limit": gauge("quota_limit", "A VO's quota per resource (only limited resources)"),
        "free": gauge("gpus_free", "GPU units free now per class, not yet handed to a spawn"),
        "queue": gauge("gpu_queue_length", "Spawns waiting in the GPU queue of a class"),
    }


class FacilityCollector(Collector):
    """Quota and GPU state of every runtime of the hub process, read when scraped.

    Runtimes of the same process normally share one facility; when several list the same VO
    or GPU class (tests, reconfiguration), the first one's numbers are reported.
    """

    def __init__(self, source: Iterable[Runtime] | None = None) -> None:
        self._source = source

    def _runtimes(self) -> Iterable[Runtime]:
        return runtimes() if self._source is None else self._source

    def describe(self) -> Iterator[Metric]:
        yield from _families().values()

    def collect(self) -> Iterator[Metric]:
        fam = _families()
        seen: set[tuple[str, ...]] = set()
        for rt in self._runtimes():
            for q in quota_samples(rt.facility, rt.ledger):
                key = ("quota", q.vo, q.resource, q.gpu_class)
                if key in seen:
                    continue
                seen.add(key)
                fam["used"].add_metric([q.vo, q.resource, q.gpu_class], q.used)
                if q.limit is not None:
                    fam["limit"].add_metric([q.vo, q.resource, q.gpu_class], q.limit)
            for gclass, free, waiting in gpu_samples(rt.facility, rt.admission):
                if ("gpu", gclass) in seen:
                    continue
                seen.add(("gpu", gclass))
                if free is not None:
                    fam["free"].add_metric([gclass], float(free))
                fam["queue"].add_metric([gclass], float(waiting))
        yield from fam.values()


COLLECTOR = FacilityCollector()
REGISTRY.register(COLLECTOR)
