"""Quota ledger: totals, per-user caps, release, restore; invariants under any sequence."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afspawner.loader import load_facility
from afspawner.plan import GPURequest, LaunchPlan, UserIdentity
from afspawner.quota import Ledger, QuotaRefusal, Reservation, Usage

FAC = load_facility(
    {
        "vos": {
            "cms": {
                "quota": {"cpu": 10, "memory": "40Gi", "servers": 4, "gpus": {"t4": 3}},
                "per_user": {"cpu": 6, "servers": 2, "gpus": {"t4": 2}},
            }
        },
        "gpu_classes": {"t4": {"resource": "nvidia.com/gpu"}},
        "flavors": [{"name": "f", "vos": ["cms"], "image": "i", "cpu": 1, "memory": "1Gi"}],
    }
)


def plan(
    user: str, server: str = "", cpu: int = 2000, gpus: int = 0, vo: str | None = "cms"
) -> LaunchPlan:
    gpu = GPURequest("t4", "nvidia.com/gpu", gpus) if gpus else None
    return LaunchPlan(
        user, server, vo, "f", "i", cpu, 2**30, None, None, UserIdentity(user, 1000, 1000), gpu
    )


def test_admit_and_release() -> None:
    ledger = Ledger()
    ledger.admit(FAC, plan("alice"))
    ledger.admit(FAC, plan("bob"))
    assert ledger.usage("cms").cpu_millis == 4000
    assert ledger.usage("cms", "alice").servers == 1
    assert ledger.release("alice", "") is not None
    assert ledger.release("alice", "") is None  # idempotent
    assert ledger.usage("cms").cpu_millis == 2000


def test_vo_total_refusal_message() -> None:
    ledger = Ledger()
    for user in ("a", "b", "c"):
        ledger.admit(FAC, plan(user, cpu=3000))
    with pytest.raises(QuotaRefusal) as refused:
        ledger.admit(FAC, plan("d", cpu=2000))
    assert refused.value.message == (
        "VO cms uses 9/10 CPU; this server needs 2. Ask for at most 1 or stop a server"
    )
    assert len(ledger) == 3  # nothing reserved for the refused spawn


def test_per_user_caps() -> None:
    ledger = Ledger()
    ledger.admit(FAC, plan("alice", "a"))
    ledger.admit(FAC, plan("alice", "b"))
    with pytest.raises(QuotaRefusal, match=r"you already run 2/2 servers in VO cms"):
        ledger.admit(FAC, plan("alice", "c"))
    ledger.admit(FAC, plan("bob", gpus=2))
    with pytest.raises(QuotaRefusal, match=r"VO cms uses 2/3 t4 GPUs"):
        ledger.admit(FAC, plan("carol", gpus=2))  # VO total t4 is 3


def test_readmitting_a_server_replaces_its_reservation() -> None:
    ledger = Ledger()
    ledger.admit(FAC, plan("alice", cpu=6000))
    ledger.admit(FAC, plan("alice", cpu=5000))  # restart with a smaller flavor
    assert ledger.usage("cms").cpu_millis == 5000
    with pytest.raises(QuotaRefusal):
        ledger.admit(FAC, plan("alice", cpu=7000))
    assert ledger.usage("cms").cpu_millis == 5000  # the previous reservation is kept


def test_plans_without_vo_are_not_charged() -> None:
    ledger = Ledger()
    for i in range(10):
        ledger.admit(FAC, plan(f"u{i}", cpu=9000, vo=None))
    assert ledger.usage("cms") == Usage()


def test_restore_replaces_everything() -> None:
    ledger = Ledger()
    ledger.admit(FAC, plan("alice"))
    ledger.restore([Reservation("bob", "x", "cms", Usage(1000, 2**30, 1, {"t4": 1}))])
    assert [r.key for r in ledger.reservations()] == ["bob/x"]
    assert ledger.usage("cms").gpus == {"t4": 1}


ops = st.lists(
    st.tuples(
        st.sampled_from(["admit", "release"]),
        st.sampled_from("abcde"),
        st.sampled_from(["", "1", "2"]),
        st.integers(0, 4000),
        st.integers(0, 2),
    ),
    max_size=40,
)


@settings(max_examples=300)
@given(ops)
def test_no_sequence_exceeds_any_limit(sequence: list[tuple[str, str, str, int, int]]) -> None:
    ledger = Ledger()
    for op, user, server, cpu, gpus in sequence:
        if op == "admit":
            with contextlib.suppress(QuotaRefusal):
                ledger.admit(FAC, plan(user, server, cpu=cpu, gpus=gpus))
        else:
            ledger.release(user, server)
        vo, total = FAC.vos["cms"], ledger.usage("cms")
        assert total.cpu_millis <= (vo.quota.cpu_millis or 0)
        assert total.servers <= (vo.quota.servers or 0)
        assert total.gpus.get("t4", 0) <= vo.quota.gpus["t4"]
        for u in "abcde":
            mine = ledger.usage("cms", u)
            assert mine.cpu_millis <= (vo.per_user.cpu_millis or 0)
            assert mine.servers <= (vo.per_user.servers or 0)
            assert mine.gpus.get("t4", 0) <= vo.per_user.gpus["t4"]


def test_a_vo_with_a_gpus_map_has_no_quota_for_unlisted_classes() -> None:
    ledger = Ledger()
    a100 = GPURequest("a100", "nvidia.com/gpu", 1, display="NVIDIA A100")
    p = LaunchPlan(
        "alice", "", "cms", "f", "i", 1000, 2**30, None, None, UserIdentity("alice", 1, 1), a100
    )
    with pytest.raises(QuotaRefusal) as refused:
        ledger.admit(FAC, p)
    assert refused.value.message.startswith("VO cms has no quota for NVIDIA A100 GPUs (it has: t4)")
    assert len(ledger) == 0
    ledger.admit(FAC, plan("alice", gpus=1))  # a listed class is admitted as before


def test_a_vo_without_a_gpus_map_does_not_limit_gpus() -> None:
    fac = load_facility(
        {
            "vos": {"dune": {"quota": {"servers": 4}}},
            "gpu_classes": {"t4": {"resource": "nvidia.com/gpu"}},
            "flavors": [{"name": "f", "vos": ["dune"], "image": "i", "cpu": 1, "memory": "1Gi"}],
        }
    )
    ledger = Ledger()
    for user in ("a", "b", "c"):
        ledger.admit(fac, plan(user, gpus=4, vo="dune"))
    assert ledger.usage("dune").gpus == {"t4": 12}
