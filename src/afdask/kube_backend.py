"""dask-gateway's Kubernetes backend under the facility's policy and the hub's one quota
(docs/dask.md, "Kubernetes").

:class:`AFKubeBackend` is dask-gateway-server's ``KubeBackend`` (the DaskCluster custom
resource, reconciled by dask-gateway's ``KubeController`` into pods) with:

- cluster options generated from the facility file for the user, and a cluster
  configuration from the policy (:mod:`afdask.kube`): the VO's namespace, the flavor's image,
  exact sizes, the user's uid/gid/supplemental groups, the flavor's volumes;
- the scheduler leased in the hub's ledger *before* the DaskCluster is created (refused: the
  user gets the ledger's message and nothing is created); every scale request and every
  scheduler heartbeat asking for more workers leases them first, and ``spec.replicas`` is
  patched to the granted count only; a stopped cluster releases its lease; every
  ``lease_renew_period`` active clusters renew theirs (as :class:`afdask.backends.FacilityBackend`);
- the user's bearer token in a Secret owned by the DaskCluster, mounted as
  ``$BEARER_TOKEN_FILE`` and rewritten at each renewal when the hub has a new one.
"""

from __future__ import annotations

import base64
from typing import Any

from dask_gateway_server import models
from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.backends.kubernetes.backend import KubeBackend
from kubernetes_asyncio.client.rest import ApiException
from traitlets import Bool, Unicode

from afdask.auth import AFUser
from afdask.hub import HubError
from afdask.kube import (
    dask_volumes,
    kube_cluster_config,
    owned_by_cluster,
    token_secret_name,
    vo_namespace,
    with_token_secret,
)
from afdask.options import AFOptions, cluster_options, require_identity
from afdask.policy_base import FacilityPolicy
from afspawner.daskpolicy import parse_cluster_options, resolve_cluster
from afspawner.manifests import TOKEN_KEY, token_secret

ACTIVE = models.ClusterStatus.RUNNING


class AFKubeBackend(FacilityPolicy, KubeBackend):  # type: ignore[misc]
    """``KubeBackend`` whose clusters follow the facility's policy and the hub's quota.

    The policy traits have the names and meaning of
    :class:`~afdask.backends.FacilityBackend`'s, set as ``c.AFKubeBackend.<name>``.
    """

    pass_bearer_token = Bool(
        True, help="Give clusters the user's bearer token (a Secret).", config=True
    )
    default_namespace = Unicode(
        "default", help="Namespace of clusters whose VO has no namespace.", config=True
    )

    async def setup(self, app: Any) -> None:
        self.open_policy()
        self._running: dict[str, int] = {}
        self._owners: dict[str, str] = {}  # cluster name → user (a deleted object has none)
        await super().setup(app)
        self.start_renewing()

    async def cleanup(self) -> None:
        self.stop_renewing()
        await super().cleanup()
        await self.close_policy()

    # -- options and configuration ------------------------------------------------------------
    async def get_cluster_options(self, user: Any) -> AFOptions:
        if not isinstance(user, AFUser):  # a service token: no VOs, no identity
            user = AFUser(str(user.name), groups=user.groups, admin=user.admin)
        fac, allow_root = self.facility, bool(self.allow_root)
        options = cluster_options(fac, user, allow_root)
        context = user.context()

        def handler(opts: Any, _user: Any) -> dict[str, Any]:
            raw = {k: opts[k] for k in ("flavor", "vo", "worker_size") if k in opts}
            plan = resolve_cluster(fac, context, parse_cluster_options(raw))
            identity = require_identity(user, allow_root)
            namespace = vo_namespace(fac, plan) or self.default_namespace
            volumes = dask_volumes(fac, plan, identity, namespace)
            return kube_cluster_config(plan, identity, namespace, allow_root, volumes)

        options.handler = handler
        return options

    # -- the quota -------------------------------------------------------------------------------
    async def start_cluster(self, user: Any, cluster_options: Any) -> str:
        options, config = await self.process_cluster_options(user, cluster_options)
        obj = self.make_cluster_object(user.name, options, config)
        namespace, cid = config.namespace, obj["metadata"]["name"]
        cluster_name = f"{namespace}.{cid}"
        try:  # the scheduler first: refused, nothing is created
            lease = await self.hub.lease(user.name, cluster_name, options, 0)
        except HubError as exc:
            self.log.info("Cluster for %s refused: %s", user.name, exc.message)
            raise PublicException(exc.message) from None
        self._leased[cluster_name] = lease.workers
        token = await self._token(user.name) if self.pass_bearer_token else None
        if token:
            obj["spec"]["config"] = with_token_secret(obj["spec"]["config"], token_secret_name(cid))
        self.log.info("Creating cluster %s for user %s", cluster_name, user.name)
        try:
            created = await self.custom_client.create_namespaced_custom_object(
                "gateway.dask.org", self.crd_version, namespace, "daskclusters", obj
            )
            if token:
                labels = self.get_labels(cid, "bearer-token")
                secret = token_secret(token_secret_name(cid), namespace, labels, token)
                await self.core_client.create_namespaced_secret(
                    namespace, owned_by_cluster(secret, created)
                )
        except Exception:
            await self._release(cluster_name, user.name)
            raise
        return cluster_name

    async def _token(self, username: str) -> str | None:
        try:
            return await self.hub.token(username)
        except HubError as exc:
            self.log.warning("no bearer token for %s: %s", username, exc.message)
            return None

    async def _lease(self, cluster: Any, wanted: int) -> int | None:
        """Ask the hub for ``wanted`` workers; the granted count (``None``: no answer)."""
        running = self._running.get(cluster.name, 0)
        try:
            lease = await self.hub.lease(
                cluster.username, cluster.name, cluster.options, wanted, running
            )
        except HubError as exc:
            self.log.warning("lease of cluster %s: %s", cluster.name, exc.message)
            return None
        self._leased[cluster.name] = lease.workers
        if lease.message and lease.workers < wanted:
            self._messages[cluster.name] = lease.message
        return lease.workers

    async def _release(self, cluster_name: str, username: str) -> None:
        self._leased.pop(cluster_name, None)
        self._running.pop(cluster_name, None)
        try:
            await self.hub.release(username, cluster_name)
        except HubError as exc:  # the lease expires at the hub
            self.log.warning("release of cluster %s: %s", cluster_name, exc.message)

    async def forward_message_to_scheduler(self, cluster: Any, msg: dict[str, Any]) -> None:
        if msg.get("op") != "scale" or not isinstance(msg.get("count"), int):
            await super().forward_message_to_scheduler(cluster, msg)
            return
        await self.scale_within_lease(cluster, cluster, msg, super().forward_message_to_scheduler)

    async def on_cluster_heartbeat(self, cluster_name: str, msg: dict[str, Any]) -> None:
        """The scheduler's wanted worker count becomes ``spec.replicas`` only as leased."""
        cluster = self.clusters.get(cluster_name)
        count = msg.get("count")
        if cluster is not None and cluster.status <= ACTIVE and isinstance(count, int):
            self._running[cluster_name] = len(msg.get("active_workers") or ())
            leased = self._leased.get(cluster_name)
            if leased is None or count > leased:
                granted = await self._lease(cluster, count)
                allowed = granted if granted is not None else (leased or 0)
                if count > allowed:
                    msg = {**msg, "count": allowed}
        await super().on_cluster_heartbeat(cluster_name, msg)

    async def sync_cluster(self, cluster_name: str) -> None:
        await super().sync_cluster(cluster_name)
        cluster = self.clusters.get(cluster_name)
        if cluster is not None:
            self._owners[cluster_name] = cluster.username
        if cluster_name in self._leased and (cluster is None or cluster.status > ACTIVE):
            username = self._owners.pop(cluster_name, "")
            if username:
                await self._release(cluster_name, username)

    # -- renewal ---------------------------------------------------------------------------------
    async def renew_leases(self) -> None:
        """Renew every active cluster's lease with its current replicas (and what runs)."""
        for cluster in list(self.clusters.values()):
            if cluster.status > ACTIVE:
                continue
            obj = self.informer.get(cluster.name) or {}
            replicas = int((obj.get("spec") or {}).get("replicas") or 0)
            await self._lease(cluster, min(replicas, self._leased.get(cluster.name, 0)))
            if self.pass_bearer_token:
                await self.refresh_token(cluster)

    async def refresh_token(self, cluster: Any) -> None:
        """Rewrite the cluster's token Secret when the hub has a new token."""
        namespace, cid = cluster.name.split(".", 1)
        name = token_secret_name(cid)
        try:
            secret = await self.core_client.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return  # started without a token
            raise
        token = await self._token(cluster.username)
        current = base64.b64decode((secret.data or {}).get(TOKEN_KEY, "")).decode()
        if token and token != current:
            body = {"stringData": {TOKEN_KEY: token}}
            await self.core_client.patch_namespaced_secret(name, namespace, body)
            self.log.info("refreshed the bearer token of cluster %s", cluster.name)
