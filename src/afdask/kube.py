"""What a Dask cluster's pods get on Kubernetes (pure; used by
:class:`afdask.kube_backend.AFKubeBackend`, see docs/dask.md, "Kubernetes").

:func:`kube_cluster_config` turns the policy's :class:`~afspawner.daskpolicy.ClusterPlan` and
the user's identity into dask-gateway ``KubeClusterConfig`` values: the flavor's image, exact
CPU/memory requests and limits, the VO's namespace, the user's uid/gid/supplemental groups as
the pods' security context (never root unless the site allows it), the worker size's GPUs
(resource request/limit, the GPU class's nodeSelector and tolerations), the flavor's volumes
(rendered by the same volume types as the notebook's, :func:`dask_volumes`) and labels naming
the user, VO and flavor. :func:`with_token_secret` mounts the user's bearer token Secret as
the notebook's is mounted (``$BEARER_TOKEN_FILE``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from afdask.options import identity_env
from afspawner.daskpolicy import ClusterPlan
from afspawner.facility import Facility
from afspawner.manifests import _mount_token, _placement
from afspawner.names import home_claim_name
from afspawner.plan import UserIdentity
from afspawner.policy import _volumes
from afspawner.volumes import RenderContext, Rendered, volume_types

CRD_GROUP = "gateway.dask.org"
TOKEN_SECRET_PREFIX = "dask-token-"  # noqa: S105 - a name prefix, not a secret


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


def vo_namespace(fac: Facility, plan: ClusterPlan) -> str | None:
    """The VO's namespace (``vos.<vo>.namespace``), as for the VO's notebooks."""
    vo = fac.vos.get(plan.vo) if plan.vo else None
    return vo.namespace if vo is not None else None


def dask_volumes(
    fac: Facility, plan: ClusterPlan, identity: UserIdentity, namespace: str
) -> tuple[Rendered, ...]:
    """The flavor's volumes (CVMFS, CephFS, EOS, home, ...) rendered for the cluster's pods,
    with the same templates values (``{username}``, ``{vo}``, ...) as for a notebook; the
    home claim is the user's (``home-<user>``), created by their first notebook."""
    flavor = next((f for f in fac.flavors if f.name == plan.flavor), None)
    if flavor is None:
        return ()
    values = {
        "username": plan.username,
        "vo": plan.vo or "",
        "uid": str(identity.uid),
        "gid": str(identity.gid),
        "server_name": "",
    }
    ctx = RenderContext(namespace, f"dask-{plan.username}", home_claim_name(plan.username))
    return tuple(volume_types().load(v.type).render(v, ctx) for v in _volumes(fac, flavor, values))


def kube_cluster_config(
    plan: ClusterPlan,
    identity: UserIdentity,
    namespace: str | None = None,
    allow_root: bool = False,
    volumes: Sequence[Rendered] = (),
) -> dict[str, Any]:
    """``KubeClusterConfig`` trait values for ``plan`` run as ``identity``."""
    pod, container = _security(identity, allow_root)
    labels = {
        "hub.jupyter.org/username": plan.username,
        "jupyterhub-af/flavor": plan.flavor,
        **({"jupyterhub-af/vo": plan.vo} if plan.vo else {}),
    }
    pod_extra: dict[str, Any] = {"securityContext": pod, "enableServiceLinks": False}
    container_extra: dict[str, Any] = {"securityContext": container}
    if volumes:
        pod_extra["volumes"] = [r.volume for r in volumes]
        container_extra["volumeMounts"] = [r.mount for r in volumes]
    worker_pod, worker_container = pod_extra, container_extra
    if plan.gpu is not None:  # the worker size's GPUs, placed as a notebook's of that class
        units = str(plan.gpu.count)  # extended resources: limits must equal requests
        gpu_resources = {plan.gpu.resource: units}
        worker_pod = {**pod_extra, **_placement(plan.gpu)}
        worker_container = {
            **container_extra,
            "resources": {"requests": gpu_resources, "limits": dict(gpu_resources)},
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
        "worker_extra_pod_config": worker_pod,
        "scheduler_extra_pod_config": pod_extra,
        "worker_extra_container_config": worker_container,
        "scheduler_extra_container_config": container_extra,
        "worker_extra_pod_labels": labels,
        "scheduler_extra_pod_labels": labels,
    }
    if namespace:
        config["namespace"] = namespace
    return config


def token_secret_name(cluster_id: str) -> str:
    """The bearer token Secret of the DaskCluster ``cluster_id`` (its metadata.name)."""
    return TOKEN_SECRET_PREFIX + cluster_id


def with_token_secret(config: Mapping[str, Any], secret_name: str) -> dict[str, Any]:
    """``config`` (``KubeClusterConfig`` values) with the token Secret mounted read-only in
    schedulers and workers, named by ``$BEARER_TOKEN_FILE`` (as in notebook pods)."""
    out = dict(config)
    for role in ("worker", "scheduler"):
        pod = dict(out.get(f"{role}_extra_pod_config") or {})
        container = dict(out.get(f"{role}_extra_container_config") or {})
        spec = {"volumes": list(pod.get("volumes") or [])}
        box = {
            "volumeMounts": list(container.get("volumeMounts") or []),
            "env": list(container.get("env") or []),
        }
        _mount_token(spec, box, secret_name)
        out[f"{role}_extra_pod_config"] = {**pod, **spec}
        out[f"{role}_extra_container_config"] = {**container, **box}
    return out


def owned_by_cluster(obj: Mapping[str, Any], cluster: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` owned by the DaskCluster ``cluster`` (as created: it needs its uid), so the
    garbage collector removes it with the cluster."""
    meta = cluster.get("metadata") or {}
    ref = {
        "apiVersion": str(cluster.get("apiVersion") or f"{CRD_GROUP}/v1alpha1"),
        "kind": "DaskCluster",
        "name": meta["name"],
        "uid": meta["uid"],
        "blockOwnerDeletion": False,
    }
    return {**obj, "metadata": {**(obj.get("metadata") or {}), "ownerReferences": [ref]}}
