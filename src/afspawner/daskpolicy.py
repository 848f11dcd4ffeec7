"""Dask clusters under the facility's policy (pure; no I/O). See docs/dask.md.

- :func:`option_spec`: the cluster options a user is offered (flavors with a ``dask`` block
  the user may start, the VOs they may charge, the worker sizes), as plain data; the gateway
  turns it into dask-gateway ``Options`` (:mod:`afdask.options`).
- :func:`parse_cluster_options` and :func:`resolve_cluster`: untrusted options → a
  :class:`ClusterPlan`, or :class:`~afspawner.policy.Refusal` with a message for the user
  (the same access rules and messages as the spawn form: :func:`afspawner.policy.offered_flavors`).
- :func:`grant_workers`: how many workers of a cluster fit the VO's quota and the user's caps
  *now*, counted in the hub's one :class:`~afspawner.quota.Ledger` with the notebook servers;
  the check and the reservation happen in one synchronous call.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from afcore.quantity import human_cpu, human_memory
from afspawner.facility import VO, DaskSize, DaskSpec, Facility, Flavor
from afspawner.plan import GPURequest
from afspawner.policy import Refusal, UserContext, _denial, offered_flavors
from afspawner.quota import Ledger, QuotaRefusal, Reservation, Usage, _over, gpu_class_problem

OPTION_KEYS = ("flavor", "vo", "worker_size")
LEASE_PREFIX = "dask:"  # ledger key of a cluster: (username, "dask:<cluster name>")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")
_CLUSTER = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,127}$")


@dataclass(frozen=True)
class Choice:
    name: str
    label: str


@dataclass(frozen=True)
class OptionSpec:
    """What the user may pick; the first choice of each list is the default."""

    flavors: tuple[Choice, ...]
    vos: tuple[Choice, ...]
    worker_sizes: tuple[Choice, ...]  # every size of every offered flavor, once


@dataclass(frozen=True)
class ClusterRequest:
    flavor: str | None = None
    vo: str | None = None
    worker_size: str | None = None


@dataclass(frozen=True)
class ClusterPlan:
    """What a user's cluster may run, decided by policy; the gateway adds only mechanics."""

    username: str
    flavor: str
    vo: str | None
    image: str
    scheduler: DaskSize
    worker: DaskSize
    max_workers: int | None  # per cluster: ``max_workers`` and ``max_cores`` of the flavor
    env: Mapping[str, str]
    gpu: GPURequest | None = None  # each worker's GPUs (the worker size's ``gpu``)

    def options(self) -> dict[str, str]:
        """The normalized cluster options (what the gateway stores and sends to the hub)."""
        return {"flavor": self.flavor, "vo": self.vo or "", "worker_size": self.worker.name}


def dask_flavors(fac: Facility, user: UserContext) -> tuple[Flavor, ...]:
    """The flavors with a ``dask`` block that ``user`` may start, in facility order."""
    return tuple(f for f in offered_flavors(fac, user) if f.dask is not None)


def _vos(flavor: Flavor, user: UserContext) -> list[str]:
    return [v for v in user.vos if not flavor.vos or v in flavor.vos]


def option_spec(fac: Facility, user: UserContext) -> OptionSpec:
    """The options ``user`` is offered (empty flavors: no Dask cluster for them)."""
    flavors = dask_flavors(fac, user)
    ordered = sorted(flavors, key=lambda f: not f.default)  # the default flavor first
    vos = dict.fromkeys(v for f in ordered for v in _vos(f, user))
    sizes: dict[str, str] = {}
    for f in ordered:
        assert f.dask is not None
        for s in f.dask.worker_sizes:
            sizes.setdefault(s.name, _size_label(s))
    return OptionSpec(
        tuple(Choice(f.name, f.display) for f in ordered),
        tuple(Choice(v, fac.vos[v].display if v in fac.vos else v) for v in vos),
        tuple(Choice(n, label) for n, label in sizes.items()),
    )


def _size_label(size: DaskSize) -> str:
    gpu = f", {size.gpu.count} {size.gpu.gpu_class} GPU" if size.gpu else ""
    return f"{size.name} ({human_cpu(size.cpu_millis)} CPU, {human_memory(size.memory_bytes)}{gpu})"


def _worker_gpu(fac: Facility, user: UserContext, worker: DaskSize) -> GPURequest | None:
    """The GPUs of one worker of size ``worker``; a class needing a group the user lacks is
    refused with the notebook's message."""
    if worker.gpu is None:
        return None
    gclass = fac.gpu_classes[worker.gpu.gpu_class]
    if gclass.groups and not set(gclass.groups) & user.groups:
        raise Refusal(
            f"{gclass.display} GPUs require approval (group "
            f"{' or '.join(gclass.groups)}); ask your facility's support to be added"
        )
    return GPURequest(
        gpu_class=gclass.name,
        resource=gclass.resource,
        count=worker.gpu.count,
        selector=gclass.selector,
        tolerations=gclass.tolerations,
        display=gclass.display,
    )


def parse_cluster_options(raw: object) -> ClusterRequest:
    """Validate untrusted cluster options; unknown keys and wrong types are refused (400)."""
    if raw is None:
        return ClusterRequest()
    if not isinstance(raw, Mapping):
        raise Refusal("cluster options must be a JSON object", 400)
    unknown = sorted(str(k)[:40] for k in raw if k not in OPTION_KEYS)
    if unknown:
        raise Refusal(
            f"unknown cluster option(s) {', '.join(repr(u) for u in unknown)}; "
            f"allowed: {', '.join(OPTION_KEYS)}",
            400,
        )
    values: dict[str, str | None] = {}
    for key in OPTION_KEYS:
        value = raw.get(key)
        if value is None or value == "":
            values[key] = None
        elif isinstance(value, str) and _NAME.match(value):
            values[key] = value
        else:
            raise Refusal(f"cluster option '{key}' must be a name, got {str(value)[:40]!r}", 400)
    return ClusterRequest(values["flavor"], values["vo"], values["worker_size"])


def _pick_flavor(fac: Facility, user: UserContext, name: str | None) -> tuple[Flavor, DaskSpec]:
    flavors = dask_flavors(fac, user)
    if name is None:
        if not flavors:
            raise Refusal(
                "no Dask cluster is available to you; your VOs: "
                f"{', '.join(user.vos) or 'none'}. Ask your facility to add you to an experiment"
            )
        flavor = next((f for f in flavors if f.default), flavors[0])
    else:
        found = fac.flavor(name)
        if found is None or found.dask is None:
            offered = ", ".join(f.name for f in flavors) or "none"
            raise Refusal(f"flavor '{name}' offers no Dask clusters; yours: {offered}", 400)
        if found not in flavors:
            raise Refusal(_denial(fac, user, found) or f"flavor '{name}' is not for you")
        flavor = found
    assert flavor.dask is not None
    return flavor, flavor.dask


def _pick_vo(flavor: Flavor, user: UserContext, requested: str | None) -> str | None:
    candidates = _vos(flavor, user)
    if requested is not None:
        if requested not in candidates:
            raise Refusal(
                f"you cannot charge a Dask cluster of flavor '{flavor.name}' to VO "
                f"'{requested}'; possible: {', '.join(candidates) or 'none'}"
            )
        return requested
    return candidates[0] if candidates else None


def _max_workers(spec: DaskSpec, worker: DaskSize) -> int | None:
    caps = [c for c in (spec.max_workers,) if c is not None]
    if spec.max_cores_millis is not None:
        caps.append(spec.max_cores_millis // worker.cpu_millis)
    return min(caps) if caps else None


def resolve_cluster(fac: Facility, user: UserContext, request: ClusterRequest) -> ClusterPlan:
    """Decide what ``user``'s cluster runs, or raise :class:`Refusal` (forged options too)."""
    flavor, spec = _pick_flavor(fac, user, request.flavor)
    vo = _pick_vo(flavor, user, request.vo)
    if request.worker_size is None:
        worker = spec.worker_sizes[0]
    else:
        found = next((s for s in spec.worker_sizes if s.name == request.worker_size), None)
        if found is None:
            names = ", ".join(s.name for s in spec.worker_sizes)
            raise Refusal(
                f"flavor '{flavor.name}' has no worker size '{request.worker_size}'; "
                f"sizes: {names}",
                400,
            )
        worker = found
    env = {
        **flavor.env,
        "AF_FLAVOR": flavor.name,
        "AF_DASK_WORKER_SIZE": worker.name,
        **({"AF_VO": vo} if vo else {}),
    }
    return ClusterPlan(
        username=user.name,
        flavor=flavor.name,
        vo=vo,
        image=spec.image,
        scheduler=spec.scheduler,
        worker=worker,
        max_workers=_max_workers(spec, worker),
        env=MappingProxyType(env),
        gpu=_worker_gpu(fac, user, worker),
    )


# -- one quota ---------------------------------------------------------------------------------
def lease_name(cluster: str) -> str:
    """The ledger's server name of a cluster's reservation (``dask:<cluster>``)."""
    if not _CLUSTER.match(cluster):
        raise Refusal(f"not a cluster name: {cluster[:40]!r}", 400)
    return LEASE_PREFIX + cluster


def cluster_usage(plan: ClusterPlan, workers: int) -> Usage:
    """The scheduler and ``workers`` workers; Dask pods count CPU, memory and the workers'
    GPUs per class, not servers."""
    gpus = {plan.gpu.gpu_class: workers * plan.gpu.count} if plan.gpu and workers else {}
    return Usage(
        plan.scheduler.cpu_millis + workers * plan.worker.cpu_millis,
        plan.scheduler.memory_bytes + workers * plan.worker.memory_bytes,
        0,
        gpus,
    )


@dataclass(frozen=True)
class Grant:
    workers: int  # reserved now (0 ≤ workers ≤ wanted, or ``running`` when more)
    message: str | None  # why fewer than wanted, for the user


def _fits(vo: VO, ledger: Ledger, user: str, ask: Usage) -> str | None:
    return _over(vo.per_user, ledger.usage(vo.name, user), ask, "you", vo.name) or _over(
        vo.quota, ledger.usage(vo.name), ask, "vo", vo.name
    )


def _dask_message(message: str, plan: ClusterPlan, wanted: int, granted: int) -> str:
    detail = message.split(";")[0]
    return (
        f"{detail}: your Dask cluster can have {granted} of the {wanted} workers you asked "
        f"({plan.worker.name} workers); stop a server or a cluster, or ask for fewer"
    )


def grant_workers(
    fac: Facility, ledger: Ledger, plan: ClusterPlan, cluster: str, wanted: int, running: int = 0
) -> Grant:
    """Reserve the scheduler and as many of ``wanted`` workers as fit, in one synchronous step.

    The cluster's previous reservation is replaced. ``running`` workers exist already and are
    always counted (a renewal after a hub restart). Without room for the scheduler itself a
    new cluster is refused (:class:`~afspawner.quota.QuotaRefusal`). ``max_workers`` of the
    flavor caps ``wanted`` first.
    """
    name = lease_name(cluster)
    wanted = max(wanted, 0)
    cap_message = None
    if plan.max_workers is not None and wanted > plan.max_workers:
        cap_message = (
            f"flavor '{plan.flavor}' allows at most {plan.max_workers} {plan.worker.name} "
            f"workers per cluster; you asked {wanted}"
        )
        wanted = plan.max_workers
    previous = ledger.release(plan.username, name)
    vo = fac.vos.get(plan.vo) if plan.vo is not None else None
    granted, message = wanted, cap_message
    no_class = gpu_class_problem(vo, plan.gpu, "worker size") if vo is not None else None
    if vo is not None and no_class is not None and wanted > 0:
        granted = 0  # the scheduler alone still needs room (checked below)
        message = (
            f"your Dask cluster can have 0 of the {wanted} {plan.worker.name} workers you "
            f"asked: {no_class}"
        )
        base = _fits(vo, ledger, plan.username, cluster_usage(plan, 0))
        if base is not None and running == 0 and previous is None:
            raise QuotaRefusal(f"no room for a Dask scheduler: {base}")
    elif vo is not None:
        problem = _fits(vo, ledger, plan.username, cluster_usage(plan, wanted))
        if problem is not None:
            lo, hi = 0, wanted  # the largest count that fits; usage grows with the count
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if _fits(vo, ledger, plan.username, cluster_usage(plan, mid)) is None:
                    lo = mid
                else:
                    hi = mid - 1
            granted = lo
            if granted == 0 and running == 0 and previous is None:
                base = _fits(vo, ledger, plan.username, cluster_usage(plan, 0))
                if base is not None:
                    raise QuotaRefusal(f"no room for a Dask scheduler: {base}")
            # the limit that stops one more worker (at ``wanted`` another one may come first)
            problem = _fits(vo, ledger, plan.username, cluster_usage(plan, lo + 1)) or problem
            message = _dask_message(problem, plan, wanted, granted)
    granted = max(granted, running)
    ledger.put(Reservation(plan.username, name, plan.vo, cluster_usage(plan, granted)))
    return Grant(granted, message)


def is_lease(server_name: str) -> bool:
    return server_name.startswith(LEASE_PREFIX)


# -- from the notebook -------------------------------------------------------------------------
GATEWAY_KEYS = {
    "address": "DASK_GATEWAY__ADDRESS",
    "proxy_address": "DASK_GATEWAY__PROXY_ADDRESS",
    "public_address": "DASK_GATEWAY__PUBLIC_ADDRESS",
}


def gateway_env(settings: Mapping[str, object]) -> dict[str, str]:
    """The server environment that makes ``dask_gateway.Gateway()`` work without arguments
    (``AFSpawner.dask_gateway``: ``address`` required, ``proxy_address``/``public_address``
    optional); the client authenticates with the server's ``JUPYTERHUB_API_TOKEN``."""
    if not settings:
        return {}
    unknown = sorted(str(k) for k in settings if k not in GATEWAY_KEYS)
    if unknown:
        raise ValueError(
            f"c.AFSpawner.dask_gateway: unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(GATEWAY_KEYS)}"
        )
    if not isinstance(settings.get("address"), str) or not settings["address"]:
        raise ValueError("c.AFSpawner.dask_gateway.address: required (the gateway's URL)")
    env = {"DASK_GATEWAY__AUTH__TYPE": "jupyterhub"}
    for key, name in GATEWAY_KEYS.items():
        value = settings.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise ValueError(f"c.AFSpawner.dask_gateway.{key}: must be a string")
            env[name] = value
    return env
