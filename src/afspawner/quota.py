"""Per-VO quota admission with reservations (pure; no I/O).

The ledger holds one reservation per running or starting server. ``admit`` checks the VO's
totals and the user's caps and records the reservation in the same synchronous call, so
concurrent spawns on the hub's event loop can never overshoot. ``release`` frees it on stop or
failure; ``restore``/``put`` rebuild it from the servers the hub knows after a restart and at
each sweep (:mod:`afspawner.ownership` decides which).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from afcore.quantity import human_cpu, human_memory
from afspawner.facility import VO, Facility, Resources
from afspawner.plan import GPURequest, LaunchPlan
from afspawner.policy import Refusal


@dataclass(frozen=True)
class Usage:
    cpu_millis: int = 0
    memory_bytes: int = 0
    servers: int = 0
    gpus: Mapping[str, int] = field(default_factory=dict)

    def plus(self, other: Usage) -> Usage:
        gpus = dict(self.gpus)
        for name, n in other.gpus.items():
            gpus[name] = gpus.get(name, 0) + n
        return Usage(
            self.cpu_millis + other.cpu_millis,
            self.memory_bytes + other.memory_bytes,
            self.servers + other.servers,
            {k: v for k, v in gpus.items() if v},
        )


def plan_usage(plan: LaunchPlan) -> Usage:
    gpus = {plan.gpu.gpu_class: plan.gpu.count} if plan.gpu else {}
    return Usage(plan.cpu_millis, plan.memory_bytes, 1, gpus)


def server_key(username: str, server_name: str) -> str:
    return f"{username}/{server_name}"


@dataclass(frozen=True)
class Reservation:
    username: str
    server_name: str
    vo: str | None
    usage: Usage

    @property
    def key(self) -> str:
        return server_key(self.username, self.server_name)


class QuotaRefusal(Refusal):
    """A spawn that would exceed a VO total or a per-user cap."""


def _over(limits: Resources, used: Usage, ask: Usage, who: str, vo: str) -> str | None:
    """The first limit ``used + ask`` would exceed, as a message; ``None`` when it fits."""
    checks: list[tuple[str, int | None, int, int, Callable[[int], str]]] = [
        ("servers", limits.servers, used.servers, ask.servers, str),
        ("CPU", limits.cpu_millis, used.cpu_millis, ask.cpu_millis, human_cpu),
        ("memory", limits.memory_bytes, used.memory_bytes, ask.memory_bytes, human_memory),
    ]
    checks += [
        (f"{name} GPUs", limits.gpus.get(name), used.gpus.get(name, 0), n, str)
        for name, n in ask.gpus.items()
    ]
    for what, limit, in_use, wanted, fmt in checks:
        if limit is None or in_use + wanted <= limit:
            continue
        left = max(limit - in_use, 0)
        if who == "you":
            scope = f"you use {fmt(in_use)}/{fmt(limit)} {what} of your allowance in VO {vo}"
            if what == "servers":
                return f"you already run {in_use}/{limit} servers in VO {vo}; stop one first"
        else:
            scope = f"VO {vo} uses {fmt(in_use)}/{fmt(limit)} {what}"
            if what == "servers":
                return f"VO {vo} already runs {in_use}/{limit} servers; try again later"
        return (
            f"{scope}; this server needs {fmt(wanted)}. Ask for at most {fmt(left)} "
            "or stop a server"
        )
    return None


def gpu_class_problem(vo: VO, gpu: GPURequest | None, other: str = "flavor") -> str | None:
    """A VO whose ``quota.gpus`` lists classes has no quota for the classes it does not list."""
    if gpu is not None and vo.quota.gpus and gpu.gpu_class not in vo.quota.gpus:
        return (
            f"VO {vo.name} has no quota for {gpu.label} GPUs "
            f"(it has: {', '.join(sorted(vo.quota.gpus))}); pick another {other} or ask your "
            "facility"
        )
    return None


def _check_gpu_class(vo: VO, plan: LaunchPlan) -> None:
    problem = gpu_class_problem(vo, plan.gpu)
    if problem is not None:
        raise QuotaRefusal(problem)


class _Totals:
    """Running sums of the reservations of one VO or of one user in a VO (mutable)."""

    __slots__ = ("count", "cpu_millis", "gpus", "memory_bytes", "servers")

    def __init__(self) -> None:
        self.count = 0  # reservations counted: the entry is dropped when it falls to 0
        self.cpu_millis = 0
        self.memory_bytes = 0
        self.servers = 0
        self.gpus: dict[str, int] = {}

    def add(self, usage: Usage, sign: int) -> None:
        self.count += sign
        self.cpu_millis += sign * usage.cpu_millis
        self.memory_bytes += sign * usage.memory_bytes
        self.servers += sign * usage.servers
        for name, n in usage.gpus.items():
            left = self.gpus.get(name, 0) + sign * n
            if left:
                self.gpus[name] = left
            else:
                self.gpus.pop(name, None)

    def usage(self) -> Usage:
        return Usage(self.cpu_millis, self.memory_bytes, self.servers, dict(self.gpus))


K = TypeVar("K")


def _apply(table: dict[K, _Totals], key: K, usage: Usage, sign: int) -> None:
    """Add (``sign`` 1) or remove (-1) one reservation's usage; drop totals of nothing."""
    totals = table.get(key)
    if totals is None:
        totals = table[key] = _Totals()
    totals.add(usage, sign)
    if totals.count == 0:
        del table[key]


class Ledger:
    """Reservations of one hub process, keyed by ``user/server``.

    Totals per VO and per (VO, user) are kept as running sums, updated by every change, so
    ``usage`` and ``admit`` cost the same whether 10 or 10,000 servers run.
    """

    def __init__(self) -> None:
        self._reservations: dict[str, Reservation] = {}
        self._per_vo: dict[str | None, _Totals] = {}
        self._per_user: dict[tuple[str | None, str], _Totals] = {}

    def __len__(self) -> int:
        return len(self._reservations)

    def reservations(self) -> tuple[Reservation, ...]:
        return tuple(self._reservations.values())

    def usage(self, vo: str, username: str | None = None) -> Usage:
        totals = self._per_vo.get(vo) if username is None else self._per_user.get((vo, username))
        return Usage() if totals is None else totals.usage()

    # -- every change of ``_reservations`` goes through these, so the sums stay exact --------
    def _totals(self, r: Reservation, sign: int) -> None:
        _apply(self._per_vo, r.vo, r.usage, sign)
        _apply(self._per_user, (r.vo, r.username), r.usage, sign)

    def _count(self, r: Reservation) -> None:
        previous = self._reservations.get(r.key)
        if previous is not None:
            self._totals(previous, -1)
        self._reservations[r.key] = r  # a replaced key keeps its place, as in a plain dict
        self._totals(r, 1)

    def _uncount(self, key: str) -> Reservation | None:
        r = self._reservations.pop(key, None)
        if r is not None:
            self._totals(r, -1)
        return r

    def admit(self, fac: Facility, plan: LaunchPlan) -> Reservation:
        """Reserve ``plan`` or raise :class:`QuotaRefusal`; re-admitting a key replaces it.

        The check and the reservation happen in this one synchronous call.
        """
        reservation = Reservation(plan.username, plan.server_name, plan.vo, plan_usage(plan))
        previous = self._uncount(reservation.key)
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
                self._count(previous)
            raise
        self._count(reservation)
        return reservation

    def release(self, username: str, server_name: str) -> Reservation | None:
        return self._uncount(server_key(username, server_name))

    def put(self, reservation: Reservation) -> None:
        """Count a server that runs already (the hub's view says so); no quota check."""
        self._count(reservation)

    def restore(self, reservations: Iterable[Reservation]) -> None:
        """Replace the ledger with what the cluster says is running (hub restart)."""
        latest = {r.key: r for r in reservations}
        self._reservations, self._per_vo, self._per_user = {}, {}, {}
        for r in latest.values():
            self._count(r)
