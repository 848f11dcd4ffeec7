"""The ledger's running totals equal a recomputation from its reservations after any sequence.

``SummingLedger`` is the ledger as it was before the running totals (every ``usage`` sums all
reservations): the reference the decisions are compared with, and the "before" of
``benchmarks/bench_admission.py``.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from afspawner.facility import Facility
from afspawner.loader import load_facility
from afspawner.plan import GPURequest, LaunchPlan, UserIdentity
from afspawner.quota import (
    Ledger,
    QuotaRefusal,
    Reservation,
    Usage,
    _check_gpu_class,
    _over,
    plan_usage,
)

FAC = load_facility(
    {
        "vos": {
            "cms": {
                "quota": {"cpu": 10, "memory": "6Gi", "servers": 5, "gpus": {"t4": 3}},
                "per_user": {"cpu": 6, "servers": 2, "gpus": {"t4": 2}},
            },
            "atlas": {"quota": {"servers": 3, "gpus": {"t4": 2, "a100": 1}}},
            "dune": {"per_user": {"memory": "3Gi"}},
        },
        "gpu_classes": {
            "t4": {"resource": "nvidia.com/gpu"},
            "a100": {"resource": "nvidia.com/gpu"},
        },
        "flavors": [
            {"name": "f", "vos": ["cms", "atlas", "dune"], "image": "i", "cpu": 1, "memory": "1Gi"}
        ],
    }
)
VOS = ("cms", "atlas", "dune", "gone", None)  # "gone": a VO the facility no longer has
USERS = "abc"


class SummingLedger:
    """The ledger before running totals: ``usage`` walks every reservation (O(n))."""

    def __init__(self) -> None:
        self._reservations: dict[str, Reservation] = {}

    def usage(self, vo: str, username: str | None = None) -> Usage:
        total = Usage()
        for r in self._reservations.values():
            if r.vo == vo and (username is None or r.username == username):
                total = total.plus(r.usage)
        return total

    def admit(self, fac: Facility, plan: LaunchPlan) -> Reservation:
        reservation = Reservation(plan.username, plan.server_name, plan.vo, plan_usage(plan))
        previous = self._reservations.pop(reservation.key, None)
        try:
            if plan.vo is not None and plan.vo in fac.vos:
                vo = fac.vos[plan.vo]
                ask = reservation.usage
                _check_gpu_class(vo, plan)
                message = _over(
                    vo.per_user, self.usage(vo.name, plan.username), ask, "you", vo.name
                ) or _over(vo.quota, self.usage(vo.name), ask, "vo", vo.name)
                if message is not None:
                    raise QuotaRefusal(message)
        except QuotaRefusal:
            if previous is not None:
                self._reservations[previous.key] = previous
            raise
        self._reservations[reservation.key] = reservation
        return reservation

    def release(self, username: str, server_name: str) -> Reservation | None:
        return self._reservations.pop(f"{username}/{server_name}", None)

    def put(self, reservation: Reservation) -> None:
        self._reservations[reservation.key] = reservation

    def restore(self, reservations: Iterable[Reservation]) -> None:
        self._reservations = {r.key: r for r in reservations}


def make_plan(
    user: str, server: str, vo: str | None, cpu: int, mem_gib: int, gpu: tuple[str, int] | None
) -> LaunchPlan:
    request = GPURequest(gpu[0], "nvidia.com/gpu", gpu[1]) if gpu else None
    ident = UserIdentity(user, 1000, 1000)
    return LaunchPlan(user, server, vo, "f", "i", cpu, mem_gib * 2**30, None, None, ident, request)


def recomputed(ledger: Ledger, vo: str | None, username: str | None = None) -> Usage:
    total = Usage()
    for r in ledger.reservations():
        if r.vo == vo and (username is None or r.username == username):
            total = total.plus(r.usage)
    return total


servers = st.sampled_from(["", "1", "2"])
gpus = st.none() | st.tuples(st.sampled_from(["t4", "a100"]), st.integers(1, 2))
usages = st.builds(
    Usage,
    st.integers(0, 4000),
    st.integers(0, 2**32),
    st.integers(0, 1),
    st.dictionaries(st.sampled_from(["t4", "a100", "h100"]), st.integers(0, 3), max_size=2),
)
reservations = st.builds(Reservation, st.sampled_from(USERS), servers, st.sampled_from(VOS), usages)
op = st.one_of(
    st.tuples(
        st.just("admit"),
        st.builds(
            make_plan,
            st.sampled_from(USERS),
            servers,
            st.sampled_from(VOS),
            st.integers(0, 5000),
            st.integers(0, 3),
            gpus,
        ),
    ),
    st.tuples(st.just("release"), st.tuples(st.sampled_from(USERS), servers)),
    st.tuples(st.just("put"), reservations),
    st.tuples(st.just("restore"), st.lists(reservations, max_size=6)),
)


def apply(ledger: Ledger | SummingLedger, name: str, arg: object) -> object:
    """The operation's outcome: the reservation, the refusal message, or what was released."""
    if name == "admit":
        assert isinstance(arg, LaunchPlan)
        try:
            return ledger.admit(FAC, arg)
        except QuotaRefusal as refused:
            return refused.message
    if name == "release":
        assert isinstance(arg, tuple)
        return ledger.release(*arg)
    if name == "put":
        assert isinstance(arg, Reservation)
        return ledger.put(arg)
    assert isinstance(arg, list)
    return ledger.restore(arg)


@settings(max_examples=400, deadline=None)
@given(st.lists(op, max_size=40))
def test_running_totals_equal_a_recomputation(sequence: list[tuple[str, object]]) -> None:
    ledger, reference = Ledger(), SummingLedger()
    for name, arg in sequence:
        assert apply(ledger, name, arg) == apply(reference, name, arg)
        assert ledger.reservations() == tuple(reference._reservations.values())
        for vo in VOS:
            if vo is None:
                continue
            assert ledger.usage(vo) == recomputed(ledger, vo) == reference.usage(vo)
            for user in USERS:
                assert ledger.usage(vo, user) == recomputed(ledger, vo, user)
        # totals of nothing are dropped: memory follows the servers, not the history
        assert set(ledger._per_vo) == {r.vo for r in ledger.reservations()}
        assert set(ledger._per_user) == {(r.vo, r.username) for r in ledger.reservations()}


def test_a_refused_readmit_keeps_the_previous_totals() -> None:
    ledger = Ledger()
    ledger.admit(FAC, make_plan("a", "", "cms", 4000, 1, ("t4", 2)))
    before = ledger.usage("cms"), ledger.usage("cms", "a")
    with pytest.raises(QuotaRefusal):
        ledger.admit(FAC, make_plan("a", "", "cms", 7000, 1, None))  # over the user's 6 CPUs
    assert (ledger.usage("cms"), ledger.usage("cms", "a")) == before
    assert before[0] == Usage(4000, 2**30, 1, {"t4": 2})
    ledger.admit(FAC, make_plan("a", "", "cms", 1000, 1, None))  # replaces: GPUs given back
    assert ledger.usage("cms") == Usage(1000, 2**30, 1, {})


def test_released_gpus_leave_no_zero_entries() -> None:
    ledger = Ledger()
    ledger.put(Reservation("a", "", "atlas", Usage(0, 0, 1, {"a100": 1})))
    ledger.put(Reservation("b", "", "atlas", Usage(0, 0, 1, {"t4": 1})))
    ledger.release("a", "")
    assert ledger.usage("atlas").gpus == {"t4": 1}
    assert ledger.usage("atlas", "a") == Usage()
