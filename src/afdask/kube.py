"""What a Dask cluster's pods get on Kubernetes (pure; a building block of the Kubernetes
slice, not wired to a backend yet: see docs/dask.md, "Not yet").

:func:`kube_cluster_config` turns the policy's :class:`~afspawner.daskpolicy.ClusterPlan` and
the user's identity into dask-gateway ``KubeClusterConfig`` values: the flavor's image, exact
CPU/memory requests and limits, the VO's namespace, the user's uid/gid/supplemental groups as
the pods' security context (never root unless the site allows it), and labels naming the
user, VO and flavor.
"""

from __future__ import annotations

from typing import Any

from afdask.options import identity_env
from afspawner.daskpolicy import ClusterPlan
from afspawner.plan import UserIdentity


def _security(identity: UserIdentity, allow_root: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    pod: dict[str, Any] = {
        "runAsUser": identity.uid,
        "runAsGroup": identity.gid,
        "fsGroup": identity.gid,
        "supplementalGroups": list(identity.supplemental_gids),
    }
    container: dict[str, Any] = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    if not allow_root:
        pod["runAsNonRoot"] = True
    return pod, container


def kube_cluster_config(
    plan: ClusterPlan,
    identity: UserIdentity,
    namespace: str | None = None,
    allow_root: bool = False,
) -> dict[str, Any]:
    """``KubeClusterConfig`` trait values for ``plan`` run as ``identity``."""
    pod, container = _security(identity, allow_root)
    labels = {
        "hub.jupyter.org/username": plan.username,
        "jupyterhub-af/flavor": plan.flavor,
        **({"jupyterhub-af/vo": plan.vo} if plan.vo else {}),
    }
    worker, scheduler = plan.worker, plan.scheduler
    config: dict[str, Any] = {
        "image": plan.image,
        "worker_cores": worker.cpu_millis / 1000,
        "worker_cores_limit": worker.cpu_millis / 1000,
        "worker_memory": worker.memory_bytes,
        "worker_memory_limit": worker.memory_bytes,
        "scheduler_cores": scheduler.cpu_millis / 1000,
        "scheduler_cores_limit": scheduler.cpu_millis / 1000,
        "scheduler_memory": scheduler.memory_bytes,
        "scheduler_memory_limit": scheduler.memory_bytes,
        "cluster_max_workers": plan.max_workers,
        "environment": {**plan.env, **identity_env(identity)},
        "worker_extra_pod_config": {"securityContext": pod},
        "scheduler_extra_pod_config": {"securityContext": pod},
        "worker_extra_container_config": {"securityContext": container},
        "scheduler_extra_container_config": {"securityContext": container},
        "worker_extra_pod_labels": labels,
        "scheduler_extra_pod_labels": labels,
    }
    if namespace:
        config["namespace"] = namespace
    return config
