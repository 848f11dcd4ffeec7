"""dask-gateway ``Options`` generated from the facility for one user (see docs/dask.md).

The fields are :func:`afspawner.daskpolicy.option_spec` (only what the user may pick); the
submitted options are checked by :func:`afspawner.daskpolicy.resolve_cluster` first, so a
forged set gets the policy's message ("flavor 'atlas-dask' is for members of atlas; your VOs:
cms"), not a generic one; the handler turns the plan into the cluster's configuration.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from dask_gateway_server.options import Options, Select

from afdask.auth import AFUser
from afspawner.daskpolicy import ClusterPlan, option_spec, parse_cluster_options, resolve_cluster
from afspawner.facility import Facility
from afspawner.plan import UserIdentity
from afspawner.policy import Refusal, UserContext


def identity_env(identity: UserIdentity) -> dict[str, str]:
    return {
        "NB_USER": identity.username,
        "NB_UID": str(identity.uid),
        "NB_GID": str(identity.gid),
    }


def cluster_config(plan: ClusterPlan, identity: UserIdentity) -> dict[str, Any]:
    """The dask-gateway cluster configuration of ``plan`` (``ClusterConfig`` trait values;
    ``uid``/``gid``/... are :class:`afdask.backends.AFClusterConfig`'s, ``image`` Kubernetes')."""
    return {
        "worker_cores": max(1, math.ceil(plan.worker.cpu_millis / 1000)),
        "worker_memory": plan.worker.memory_bytes,
        "scheduler_cores": max(1, math.ceil(plan.scheduler.cpu_millis / 1000)),
        "scheduler_memory": plan.scheduler.memory_bytes,
        "cluster_max_workers": plan.max_workers,
        "environment": {**plan.env, **identity_env(identity)},
        "image": plan.image,
        "uid": identity.uid,
        "gid": identity.gid,
        "supplemental_gids": list(identity.supplemental_gids),
        "vo": plan.vo or "",
        "flavor": plan.flavor,
    }


def require_identity(user: AFUser, allow_root: bool = False) -> UserIdentity:
    identity = user.identity
    if identity is None:
        raise Refusal(user.identity_problem or f"no POSIX identity is known for {user.name}")
    if (identity.uid == 0 or identity.gid == 0) and not allow_root:
        raise Refusal("refusing to run a Dask cluster as uid/gid 0; the site does not allow root")
    return identity


class AFOptions(Options):  # type: ignore[misc]
    """``Options`` whose ``parse_options`` applies the facility's policy first."""

    def __init__(
        self,
        fac: Facility,
        user: UserContext,
        *fields: Any,
        handler: Callable[..., Any] | None = None,
    ) -> None:
        super().__init__(*fields, handler=handler)
        self.facility = fac
        self.user = user

    def parse_options(self, request: Any) -> dict[str, Any]:
        plan = resolve_cluster(self.facility, self.user, parse_cluster_options(request))
        names = {f.field for f in self.fields}
        chosen = {k: v for k, v in plan.options().items() if k in names}
        return dict(super().parse_options(chosen))


def cluster_options(fac: Facility, user: AFUser, allow_root: bool = False) -> AFOptions:
    """The options ``user`` is offered, with the handler that configures their cluster."""
    context = user.context()
    spec = option_spec(fac, context)
    fields = []
    if spec.flavors:
        fields.append(Select("flavor", [c.name for c in spec.flavors], label="Environment"))
        if spec.vos:
            fields.append(Select("vo", [c.name for c in spec.vos], label="Charge to VO"))
        fields.append(
            Select(
                "worker_size",
                [c.name for c in spec.worker_sizes],
                label="Worker size",
            )
        )

    def handler(options: Mapping[str, Any], _user: Any) -> dict[str, Any]:
        raw = {k: options[k] for k in ("flavor", "vo", "worker_size") if k in options}
        plan = resolve_cluster(fac, context, parse_cluster_options(raw))
        return cluster_config(plan, require_identity(user, allow_root))

    return AFOptions(fac, context, *fields, handler=handler)
