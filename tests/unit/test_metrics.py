"""Spawner and authenticator metrics: reasons, outcomes, timers and the scrape-time collector.

The default registry is process-wide: tests compare values before and after, never absolute
values (other tests in the same process may have counted too).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from tornado import web

from afauth import metrics as auth_metrics
from afspawner import metrics
from afspawner.admission import GPUAdmission, WaitSettings
from afspawner.backends.base import Backend, LaunchRequest, ProgressSink, Started
from afspawner.facility import Facility
from afspawner.loader import load_facility
from afspawner.plan import GPURequest, LaunchPlan, UserIdentity
from afspawner.policy import Refusal
from afspawner.quota import QuotaRefusal
from afspawner.runtime import Runtime

FAC = load_facility(
    {
        "vos": {
            "cms": {
                "quota": {"cpu": 10, "memory": "40Gi", "servers": 4, "gpus": {"t4": 3}},
            },
            "dune": {"quota": {"servers": 2}},
        },
        "gpu_classes": {"t4": {"resource": "nvidia.com/gpu"}, "a100": {"resource": "x/a100"}},
        "flavors": [{"name": "f", "vos": ["cms"], "image": "i", "cpu": 1, "memory": "1Gi"}],
    }
)
T4 = GPURequest("t4", "nvidia.com/gpu", 1, display="T4")


def plan(user: str = "alice", gpus: int = 0, vo: str | None = "cms") -> LaunchPlan:
    gpu = GPURequest("t4", "nvidia.com/gpu", gpus, display="T4") if gpus else None
    return LaunchPlan(
        user, "", vo, "f", "i", 2000, 2**30, None, None, UserIdentity(user, 1000, 1000), gpu
    )


def value(name: str, labels: Mapping[str, str], registry: CollectorRegistry = REGISTRY) -> float:
    found = registry.get_sample_value(name, dict(labels))
    return 0.0 if found is None else found


# -- refusal reasons and outcomes ------------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "stage", "mode", "reason"),
    [
        (Refusal("unknown server option(s) 'image'", 400), "options", "refuse", "bad_option"),
        (Refusal("unknown flavor 'x'", 400), "policy", "refuse", "bad_option"),
        (Refusal("flavor 'x' is for members of cms"), "policy", "refuse", "forbidden"),
        (Refusal("no POSIX account is known"), "identity", "refuse", "no_identity"),
        (QuotaRefusal("VO cms already runs 4/4 servers"), "quota", "refuse", "quota"),
        (Refusal("no T4 GPU is free right now", 503), "gpu", "refuse", "gpu_busy"),
        (Refusal("no T4 GPU became free within 900s", 503), "gpu", "queue", "gpu_timeout"),
    ],
)
def test_refusal_reasons(exc: Refusal, stage: Any, mode: str, reason: str) -> None:
    assert metrics.refusal_reason(exc, stage, mode) == reason


def test_outcomes_and_refusals_are_counted_with_plan_labels() -> None:
    spawns = metrics.PREFIX + "spawns_total"
    refusals = metrics.PREFIX + "spawn_refusals_total"
    quota = {"outcome": "refused", "vo": "cms", "flavor": "f"}
    unknown = {"outcome": "refused", "vo": "", "flavor": ""}
    before = [value(spawns, quota), value(spawns, unknown), value(refusals, {"reason": "quota"})]
    metrics.record_refusal("quota", plan())
    metrics.record_refusal("bad_option")
    metrics.record_outcome("success", plan(vo=None))
    assert value(spawns, quota) == before[0] + 1
    assert value(spawns, unknown) == before[1] + 1
    assert value(refusals, {"reason": "quota"}) == before[2] + 1
    assert value(spawns, {"outcome": "success", "vo": "", "flavor": "f"}) >= 1


# -- timers ----------------------------------------------------------------------------------
PHASE = metrics.PREFIX + "spawn_phase_duration_seconds"
GPU_WAIT = metrics.PREFIX + "gpu_queue_wait_seconds"


def phase_count(phase: str, p: LaunchPlan) -> float:
    vo, flavor, gpu = metrics.plan_labels(p)
    labels = {"phase": phase, "vo": vo, "flavor": flavor, "gpu_class": gpu}
    return value(PHASE + "_count", labels)


async def test_timed_launch_observes_create_and_the_backend_phases() -> None:
    p = plan(gpus=1)
    before = {ph: phase_count(ph, p) for ph in metrics.PHASES}
    big = value(
        PHASE + "_bucket",
        {"phase": "image_pull", "vo": "cms", "flavor": "f", "gpu_class": "t4", "le": "120.0"},
    )

    async def launch() -> Started:
        return Started("10.0.0.1", 8888, {}, {"scheduling": 1.0, "image_pull": 130.0})

    started = await metrics.timed_launch(launch(), p)
    assert started.host == "10.0.0.1"
    after = {ph: phase_count(ph, p) for ph in metrics.PHASES}
    assert {ph: after[ph] - before[ph] for ph in metrics.PHASES} == {
        "admission": 0,
        "gpu_wait": 0,
        "create": 1,
        "scheduling": 1,
        "image_pull": 1,
        "ready": 0,
    }
    # 130 s is past the 120 s bucket: the buckets reach past 2 minutes
    labels = {"phase": "image_pull", "vo": "cms", "flavor": "f", "gpu_class": "t4"}
    assert value(PHASE + "_bucket", {**labels, "le": "120.0"}) == big
    assert value(PHASE + "_bucket", {**labels, "le": "180.0"}) >= 1


async def test_timed_launch_observes_nothing_on_failure() -> None:
    p = plan()
    before = phase_count("create", p)

    async def launch() -> Started:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await metrics.timed_launch(launch(), p)
    assert phase_count("create", p) == before


async def test_gpu_wait_granted_refused_and_timed_out() -> None:
    p = plan(gpus=1)
    free = {"t4": 1}
    admission = GPUAdmission(lambda c: free[c])
    labels = {"gpu_class": "t4"}

    def counts() -> tuple[float, ...]:
        return (
            value(GPU_WAIT + "_count", {**labels, "outcome": "granted"}),
            value(GPU_WAIT + "_count", {**labels, "outcome": "refused"}),
            value(GPU_WAIT + "_count", {**labels, "outcome": "timeout"}),
            phase_count("gpu_wait", p),
        )

    before = counts()
    refuse = WaitSettings("refuse", 1.0)
    async with metrics.timed_gpus(admission.gpus(T4, refuse, lambda m: None), p, "refuse"):
        assert admission.available("t4") == 0
        with pytest.raises(Refusal):  # the only unit is held by the first spawn
            hold = admission.gpus(T4, refuse, lambda m: None)
            async with metrics.timed_gpus(hold, p, "refuse"):
                pass
        queue = WaitSettings("queue", 0.05, safety_interval=0.01)
        with pytest.raises(Refusal):
            async with metrics.timed_gpus(admission.gpus(T4, queue, lambda m: None), p, "queue"):
                pass
    assert admission.available("t4") == 1 and admission.waiting("t4") == 0
    after = counts()
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1, 1]


async def test_a_cancelled_gpu_wait_is_counted_as_cancelled() -> None:
    p = plan(gpus=1)
    admission = GPUAdmission(lambda c: 0)
    labels = {"gpu_class": "t4", "outcome": "cancelled"}
    before = value(GPU_WAIT + "_count", labels)

    async def wait() -> None:
        hold = admission.gpus(T4, WaitSettings("queue", 60), lambda m: None)
        async with metrics.timed_gpus(hold, p, "queue"):
            pass

    task = asyncio.create_task(wait())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert value(GPU_WAIT + "_count", labels) == before + 1
    assert admission.waiting("t4") == 0


# -- the scrape-time collector ---------------------------------------------------------------
class Capacity(Backend):
    """A backend reporting fixed free GPU units (the collector reads only capacity)."""

    def __init__(self, free: Mapping[str, int]) -> None:
        self.free = dict(free)

    @classmethod
    def create(cls, facility: Facility, options: Mapping[str, Any]) -> Backend:
        raise NotImplementedError

    async def launch(self, request: LaunchRequest, progress: ProgressSink) -> Started:
        raise NotImplementedError

    async def poll(self, state: Mapping[str, Any]) -> int | None:
        return 0

    async def stop(self, state: Mapping[str, Any], now: bool = False) -> None:
        return None

    def gpu_free(self, gpu_class: str) -> int | None:
        return self.free.get(gpu_class)


def test_collector_reads_the_live_ledger_and_gpu_state() -> None:
    rt = Runtime(FAC, Capacity({"t4": 4}), {}, None)
    registry = CollectorRegistry()
    registry.register(metrics.FacilityCollector([rt]))
    used, limit = metrics.PREFIX + "quota_used", metrics.PREFIX + "quota_limit"
    servers = {"vo": "cms", "resource": "servers", "gpu_class": ""}
    assert value(used, servers, registry) == 0
    assert value(limit, servers, registry) == 4
    rt.ledger.admit(FAC, plan("alice", gpus=2))
    rt.ledger.admit(FAC, plan("bob"))
    assert value(used, servers, registry) == 2
    assert value(used, {"vo": "cms", "resource": "cpu", "gpu_class": ""}, registry) == 4.0
    assert value(limit, {"vo": "cms", "resource": "cpu", "gpu_class": ""}, registry) == 10.0
    memory = {"vo": "cms", "resource": "memory", "gpu_class": ""}
    assert value(used, memory, registry) == 2 * 2**30
    assert value(limit, memory, registry) == 40 * 2**30
    gpus = {"vo": "cms", "resource": "gpus", "gpu_class": "t4"}
    assert (value(used, gpus, registry), value(limit, gpus, registry)) == (2, 3)
    # dune has no CPU limit: no limit sample, but its use is reported
    assert (
        registry.get_sample_value(limit, {"vo": "dune", "resource": "cpu", "gpu_class": ""}) is None
    )
    assert registry.get_sample_value(used, {"vo": "dune", "resource": "cpu", "gpu_class": ""}) == 0
    rt.ledger.release("bob", "")
    assert value(used, servers, registry) == 1
    # GPUs: free per class (a class the backend cannot count has no sample), queue lengths
    free, queue = metrics.PREFIX + "gpus_free", metrics.PREFIX + "gpu_queue_length"
    assert value(free, {"gpu_class": "t4"}, registry) == 4
    assert registry.get_sample_value(free, {"gpu_class": "a100"}) is None
    waiting = [rt.admission.enqueue("t4", 3), rt.admission.enqueue("t4", 2)]
    assert value(free, {"gpu_class": "t4"}, registry) == 1  # 3 units granted to the head
    assert value(queue, {"gpu_class": "t4"}, registry) == 1
    assert value(queue, {"gpu_class": "a100"}, registry) == 0
    for grant in waiting:
        rt.admission.release(grant)
    assert value(queue, {"gpu_class": "t4"}, registry) == 0


def test_collector_reports_each_vo_once_and_describes_itself() -> None:
    first, second = (Runtime(FAC, Capacity({}), {}, None) for _ in range(2))
    first.ledger.admit(FAC, plan("alice"))
    second.ledger.admit(FAC, plan("alice"))
    second.ledger.admit(FAC, plan("bob"))
    registry = CollectorRegistry()
    registry.register(metrics.FacilityCollector([first, second]))
    text = [
        s
        for fam in registry.collect()
        for s in fam.samples
        if s.name.endswith("quota_used") and s.labels["resource"] == "servers"
    ]
    assert sorted((s.labels["vo"], s.value) for s in text) == [("cms", 1.0), ("dune", 0.0)]
    names = {fam.name for fam in metrics.FacilityCollector([]).describe()}
    assert names == {
        metrics.PREFIX + n for n in ("quota_used", "quota_limit", "gpus_free", "gpu_queue_length")
    }


def test_the_hub_registry_has_the_collector() -> None:
    names = {fam.name for fam in REGISTRY.collect()}
    assert metrics.PREFIX + "quota_used" in names
    assert metrics.PREFIX + "spawn_phase_duration_seconds" in names


# -- authenticator ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "reason", "expected"),
    [
        (None, None, ("success", None)),
        (None, "not_allowed", ("refused", "not_allowed")),
        (403, "credentials", ("refused", "credentials")),
        (403, None, ("refused", "credentials")),
        (400, None, ("refused", "bad_request")),
        (403, "blocked", ("refused", "blocked")),
        (503, "idp_unavailable", ("error", "idp_unavailable")),
        (500, None, ("error", "idp_unavailable")),
    ],
)
def test_login_outcomes(status: int | None, reason: str | None, expected: Any) -> None:
    assert auth_metrics.login_outcome(status, reason) == expected


@pytest.mark.parametrize(
    ("stage", "status", "reason"),
    [
        ("idp", 403, "credentials"),
        ("idp", 503, "idp_unavailable"),
        ("binding", 403, "binding"),
        ("access", 403, "access"),
        ("binding", 503, "idp_unavailable"),
    ],
)
def test_failure_reasons(stage: str, status: int, reason: str) -> None:
    assert auth_metrics.failure_reason(stage, status) == reason


def test_tag_keeps_the_first_reason() -> None:
    error = auth_metrics.tag(web.HTTPError(403, "no"), "blocked")
    assert auth_metrics.tag(error, "credentials") is error
    assert getattr(error, auth_metrics.REASON_ATTR) == "blocked"


def test_record_login_and_idp_latency() -> None:
    refusals = auth_metrics.PREFIX + "login_refusals_total"
    name = auth_metrics.PREFIX + "logins_total"
    before = (
        value(name, {"idp": "fnal", "outcome": "success"}),
        value(name, {"idp": "fnal", "outcome": "refused"}),
        value(refusals, {"idp": "fnal", "reason": "credentials"}),
    )
    auth_metrics.record_login("fnal", None, None)
    auth_metrics.record_login("fnal", 403, "credentials")
    after = (
        value(name, {"idp": "fnal", "outcome": "success"}),
        value(name, {"idp": "fnal", "outcome": "refused"}),
        value(refusals, {"idp": "fnal", "reason": "credentials"}),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]
    latency = auth_metrics.PREFIX + "idp_request_duration_seconds_count"
    labels = {"idp": "fnal", "operation": "bind"}
    count = value(latency, labels)
    with pytest.raises(OSError), auth_metrics.idp_request("fnal", "bind"):
        raise OSError("down")  # failed requests are timed too
    assert value(latency, labels) == count + 1
    assert auth_metrics.oidc_operation("sign-in code") == "token"
    assert auth_metrics.oidc_operation("session renewal") == "token"
    assert auth_metrics.oidc_operation("key set") == "jwks"


async def test_a_failed_launch_inside_the_timed_hold_gives_the_units_back() -> None:
    p = plan(gpus=1)
    admission = GPUAdmission(lambda c: 1)
    hold = admission.gpus(T4, WaitSettings("refuse", 1.0), lambda m: None)
    with pytest.raises(RuntimeError, match="launch failed"):
        async with metrics.timed_gpus(hold, p, "refuse") as grant:
            assert admission.available("t4") == 0 and grant.count == 1
            raise RuntimeError("launch failed")
    assert admission.available("t4") == 1
