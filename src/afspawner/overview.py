"""What the facility page and its JSON API show (pure: data in, frozen data out).

``facility_view`` takes the facility, the ledger's reservations, the GPU queues, the free GPUs
per class and who is asking (a :class:`Viewer`, built from the hub's scopes by
:func:`viewer_from_scopes`), and returns a :class:`FacilityView`: the viewer's own VOs and
allowance, their places in GPU queues, and, for admins and VO managers, the usage per VO and
per user. The catalog form (:mod:`afspawner.form`) uses :func:`quota_block` and
:func:`amounts` from here, so a disabled flavor gives the same reason as the refusal would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from afcore.quantity import human_cpu, human_memory
from afspawner.facility import VO, Facility, Flavor, Resources
from afspawner.quota import Reservation, Usage, _over

SCOPE = "custom:af-facility:read"
ALL = "all"


# -- allowance ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Amount:
    """One resource of a usage against a limit (``None`` = unlimited)."""

    resource: str  # servers, cpu (millicores), memory (bytes), gpu:<class> (units)
    label: str
    used: int
    limit: int | None
    left: int | None
    text: str  # "2 of 8" / "2 (no limit)"
    left_text: str  # "6" / "no limit"


def _fmt(resource: str) -> Callable[[int], str]:
    fmt: Callable[[int], str] = {"cpu": human_cpu, "memory": human_memory}.get(resource, str)
    return lambda n: "0" if n == 0 else fmt(n)


def _amount(resource: str, label: str, used: int, limit: int | None) -> Amount:
    fmt = _fmt(resource)
    left = None if limit is None else max(limit - used, 0)
    text = f"{fmt(used)} (no limit)" if limit is None else f"{fmt(used)} of {fmt(limit)}"
    left_text = "no limit" if left is None else fmt(left)
    return Amount(resource, label, used, limit, left, text, left_text)


def amounts(fac: Facility, limits: Resources, used: Usage) -> tuple[Amount, ...]:
    """Servers, CPU, memory and every GPU class that is limited or in use."""
    rows = [
        _amount("servers", "servers", used.servers, limits.servers),
        _amount("cpu", "CPU", used.cpu_millis, limits.cpu_millis),
        _amount("memory", "memory", used.memory_bytes, limits.memory_bytes),
    ]
    for name in sorted(set(limits.gpus) | set(used.gpus)):
        display = fac.gpu_classes[name].display if name in fac.gpu_classes else name
        rows.append(
            _amount(f"gpu:{name}", f"{display} GPUs", used.gpus.get(name, 0), limits.gpus.get(name))
        )
    return tuple(rows)


def flavor_usage(flavor: Flavor) -> Usage:
    """What one server of ``flavor`` counts against a quota."""
    gpus = {flavor.gpu.gpu_class: flavor.gpu.count} if flavor.gpu else {}
    return Usage(flavor.cpu_millis, flavor.memory_bytes, 1, gpus)


def quota_block(fac: Facility, vo: VO, flavor: Flavor, mine: Usage, vo_total: Usage) -> str | None:
    """Why a server of ``flavor`` charged to ``vo`` would be refused by the quota now, with
    the ledger's message (:meth:`afspawner.quota.Ledger.admit`); ``None`` when it fits."""
    gpu = flavor.gpu
    if gpu is not None and vo.quota.gpus and gpu.gpu_class not in vo.quota.gpus:
        label = fac.gpu_classes[gpu.gpu_class].display if gpu.gpu_class in fac.gpu_classes else ""
        return (
            f"VO {vo.name} has no quota for {label or gpu.gpu_class} GPUs "
            f"(it has: {', '.join(sorted(vo.quota.gpus))}); pick another flavor or ask your "
            "facility"
        )
    ask = flavor_usage(flavor)
    return _over(vo.per_user, mine, ask, "you", vo.name) or _over(
        vo.quota, vo_total, ask, "vo", vo.name
    )


# -- who is looking ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Viewer:
    """Who asks: a user (``name``) with their VOs, and what else they may see."""

    name: str | None = None  # None: a service or a token without a user
    vos: tuple[str, ...] = ()  # the user's own VOs
    sees_all: bool = False  # admins: every VO, every user
    manages: frozenset[str] = frozenset()  # VOs whose users this viewer may see
    sees_self: bool = True  # may see their own usage


def viewer_from_scopes(
    fac: Facility,
    name: str | None,
    vos: Iterable[str],
    scopes: Mapping[str, object],
) -> Viewer:
    """The :class:`Viewer` of a request from the hub's parsed scopes (scope → ``ALL`` or
    filters ``{"user": {...}, "group": {...}}``; JupyterHub's ``Scope.ALL`` is passed as the
    string ``"all"``).

    - everything: ``custom:af-facility:read`` without filter, or ``admin:users`` without filter
    - VO ``v`` (a VO manager): ``custom:af-facility:read!group=v`` (VO names are hub groups)
    - one's own usage: ``custom:af-facility:read!user=<you>`` (JupyterHub's ``user`` role
      gets ``custom:af-facility:read!user`` from :func:`afspawner.facility_page.setup`)
    """
    own = scopes.get(SCOPE)
    sees_all = own == ALL or scopes.get("admin:users") == ALL
    groups: set[str] = set()
    users: set[str] = set()
    if isinstance(own, Mapping):
        groups = {str(g) for g in own.get("group", ())}
        users = {str(u) for u in own.get("user", ())}
    return Viewer(
        name=name,
        vos=tuple(v for v in vos if v in fac.vos),
        sees_all=sees_all,
        manages=frozenset(v for v in groups if v in fac.vos),
        sees_self=sees_all or (name is not None and name in users),
    )


# -- the view ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class VOUse:
    vo: str
    display: str
    usage: tuple[Amount, ...]  # against the VO's quota


@dataclass(frozen=True)
class UserUse:
    user: str
    vo: str | None
    usage: tuple[Amount, ...]  # against the VO's per-user caps
    servers: tuple[str, ...]  # "user/server" ("user/" is the default server)


@dataclass(frozen=True)
class MyVO:
    vo: VOUse
    mine: UserUse


@dataclass(frozen=True)
class QueuePlace:
    gpu_class: str
    display: str
    server: str
    ahead: int  # spawns before this one
    waiting: int  # in that queue, this one included


@dataclass(frozen=True)
class GPUState:
    gpu_class: str
    display: str
    free: int | None  # None: the backend cannot tell
    waiting: int
    queue: tuple[str, ...]  # who waits, head first (only for viewers who see all)


@dataclass(frozen=True)
class FacilityView:
    facility: str
    viewer: str | None
    scope: str  # "all", "vos" (a VO manager) or "self"
    my_vos: tuple[MyVO, ...]
    my_queue: tuple[QueuePlace, ...]
    gpus: tuple[GPUState, ...]
    vos: tuple[VOUse, ...]  # every VO (all) or the managed ones
    users: tuple[UserUse, ...]  # every user of those VOs with a server


def _totals(
    reservations: Iterable[Reservation],
) -> tuple[dict[str | None, Usage], dict[tuple[str | None, str], Usage], dict[str, list[str]]]:
    per_vo: dict[str | None, Usage] = {}
    per_user: dict[tuple[str | None, str], Usage] = {}
    servers: dict[str, list[str]] = {}
    for r in sorted(reservations, key=lambda r: r.key):
        per_vo[r.vo] = per_vo.get(r.vo, Usage()).plus(r.usage)
        key = (r.vo, r.username)
        per_user[key] = per_user.get(key, Usage()).plus(r.usage)
        servers.setdefault(f"{r.vo}\0{r.username}", []).append(r.key)
    return per_vo, per_user, servers


def facility_view(
    fac: Facility,
    reservations: Iterable[Reservation],
    queues: Mapping[str, tuple[str, ...]],
    gpu_free: Mapping[str, int | None],
    who: Viewer,
) -> FacilityView:
    """What ``who`` may see of the facility's state right now."""
    per_vo, per_user, servers = _totals(reservations)

    def vo_use(vo: VO) -> VOUse:
        return VOUse(vo.name, vo.display, amounts(fac, vo.quota, per_vo.get(vo.name, Usage())))

    def user_use(vo: str | None, user: str) -> UserUse:
        limits = fac.vos[vo].per_user if vo is not None and vo in fac.vos else Resources()
        used = per_user.get((vo, user), Usage())
        return UserUse(
            user, vo, amounts(fac, limits, used), tuple(servers.get(f"{vo}\0{user}", ()))
        )

    me = who.name if who.sees_self else None
    my_vos = tuple(MyVO(vo_use(fac.vos[v]), user_use(v, me)) for v in who.vos) if me else ()
    my_queue = tuple(
        QueuePlace(name, _display(fac, name), owner, ahead, len(owners))
        for name, owners in sorted(queues.items())
        for ahead, owner in enumerate(owners)
        if me is not None and owner.partition("/")[0] == me
    )
    gpus = tuple(
        GPUState(
            name,
            g.display,
            gpu_free.get(name),
            len(queues.get(name, ())),
            tuple(queues.get(name, ())) if who.sees_all else (),
        )
        for name, g in fac.gpu_classes.items()
    )
    shown = set(fac.vos) if who.sees_all else set(who.manages)
    vos = tuple(vo_use(vo) for name, vo in fac.vos.items() if name in shown)
    keys = sorted(
        (k for k in per_user if k[0] in shown or (who.sees_all and k[0] is None)),
        key=lambda k: (k[0] or "", k[1]),
    )
    users = tuple(user_use(vo, user) for vo, user in keys)
    scope = "all" if who.sees_all else ("vos" if who.manages else "self")
    return FacilityView(fac.name, who.name, scope, my_vos, my_queue, gpus, vos, users)


def _display(fac: Facility, gpu_class: str) -> str:
    g = fac.gpu_classes.get(gpu_class)
    return g.display if g is not None else gpu_class
