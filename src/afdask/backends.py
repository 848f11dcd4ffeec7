"""dask-gateway backends under the facility's policy and the hub's one quota (docs/dask.md).

:class:`FacilityBackend` is mixed into dask-gateway's database backends:

- cluster options are generated from the facility file for the user
  (:func:`afdask.options.cluster_options`), and the cluster runs as the user's uid/gid;
- a new cluster reserves its scheduler in the hub's ledger before anything starts (refused:
  the user gets the ledger's message and nothing runs);
- every scale-up asks the hub for the workers (``PUT /hub/api/af/dask/leases/...``); the hub
  grants as many as fit the VO's quota and the user's caps, counted with the notebook
  servers in one synchronous step; the cluster is scaled to what was granted and the user
  gets the reason for the rest. Adaptive scale-ups (the scheduler's heartbeat) are clamped
  the same way; when the hub cannot be reached nothing grows;
- a stopped cluster releases its lease; every ``lease_renew_period`` each active cluster's
  lease is renewed with what runs (this shrinks it after scale-downs and rebuilds the ledger
  after a hub restart; a lease not renewed expires at the hub).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from dask_gateway_server.backends.base import PublicException
from dask_gateway_server.backends.db_base import DBBackendBase, JobStatus
from dask_gateway_server.backends.local import (
    LocalBackend,
    LocalClusterConfig,
    UnsafeLocalBackend,
)
from dask_gateway_server.utils import timestamp
from traitlets import Bool, Integer, List, Unicode, default

from afdask.auth import AFUser
from afdask.hub import HubError
from afdask.options import AFOptions, cluster_options
from afdask.policy_base import FacilityPolicy
from afspawner.backends.local import _rewrite_token, _write_token
from afspawner.daskpolicy import (
    OPTION_KEYS,
    ClusterPlan,
    parse_cluster_options,
    resolve_cluster,
)
from afspawner.policy import Refusal

DASK = os.path.join(os.path.dirname(sys.executable), "dask")


def local_gpu_refusal(plan: ClusterPlan) -> str:
    """Why a local backend cannot run ``plan`` (its workers need GPUs)."""
    assert plan.gpu is not None
    return (
        f"the local Dask backend has no GPUs; worker size '{plan.worker.name}' needs "
        f"{plan.gpu.count} {plan.gpu.label} GPU(s): pick a worker size without a GPU"
    )


class AFClusterConfig(LocalClusterConfig):  # type: ignore[misc]
    """A local cluster's configuration, with the identity and VO decided by the policy."""

    uid = Integer(-1, help="uid the scheduler and workers run as (from the hub).", config=True)
    gid = Integer(-1, help="gid the scheduler and workers run as (from the hub).", config=True)
    supplemental_gids = List(Integer(), help="Supplemental groups (from the hub).", config=True)
    vo = Unicode("", help="The VO the cluster is charged to.", config=True)
    flavor = Unicode("", help="The facility flavor of the cluster.", config=True)

    @default("scheduler_cmd")
    def _default_scheduler_cmd(self) -> list[str]:
        return [DASK, "scheduler"]

    @default("worker_cmd")
    def _default_worker_cmd(self) -> list[str]:
        return [DASK, "worker"]


def _n_running(cluster: Any) -> int:
    """Workers that exist or are being started (not yet stopped): always counted."""
    return sum(1 for w in cluster.workers.values() if w.status < JobStatus.STOPPED)


class FacilityBackend(FacilityPolicy, DBBackendBase):  # type: ignore[misc]
    """The facility's policy and quota for a dask-gateway database backend (a mixin)."""

    @default("cluster_config_class")
    def _default_cluster_config_class(self) -> type:
        return AFClusterConfig

    async def setup(self, app: Any) -> None:
        self.open_policy()
        await super().setup(app)
        self.start_renewing()

    async def cleanup(self) -> None:
        self.stop_renewing()
        await super().cleanup()  # may stop clusters: their leases are released first
        await self.close_policy()

    # -- options -----------------------------------------------------------------------------
    async def get_cluster_options(self, user: Any) -> AFOptions:
        if not isinstance(user, AFUser):  # a service token: no VOs, no identity
            user = AFUser(str(user.name), groups=user.groups, admin=user.admin)
        keep = set(self.cluster_config_class.class_trait_names())
        options = cluster_options(self.facility, user, bool(self.allow_root))
        handler = options.handler

        def only_known(opts: Any, u: Any) -> dict[str, Any]:
            raw = {k: opts[k] for k in OPTION_KEYS if k in opts}
            plan = resolve_cluster(self.facility, user.context(), parse_cluster_options(raw))
            if plan.gpu is not None:
                raise Refusal(local_gpu_refusal(plan))
            return {k: v for k, v in handler(opts, u).items() if k in keep}

        options.handler = only_known
        return options

    # -- the quota -----------------------------------------------------------------------------
    async def start_cluster(self, user: Any, cluster_options: Any) -> str:
        options, config = await self.process_cluster_options(user, cluster_options)
        cluster = self.db.create_cluster(user.name, options, config.to_dict())
        try:
            lease = await self.hub.lease(user.name, cluster.name, options, 0)
        except HubError as exc:
            self.db.update_cluster(
                cluster, status=JobStatus.FAILED, target=JobStatus.FAILED, stop_time=timestamp()
            )
            cluster.ready.set()
            cluster.shutdown.set()
            self.log.info("Cluster for %s refused: %s", user.name, exc.message)
            raise PublicException(exc.message) from None
        self._leased[cluster.name] = lease.workers
        self.log.info("Created cluster %s for user %s", cluster.name, user.name)
        self.queue.put(cluster)
        return str(cluster.name)

    async def _lease(self, cluster: Any, wanted: int) -> int | None:
        """Ask the hub for ``wanted`` workers; the granted count (``None``: no answer)."""
        try:
            lease = await self.hub.lease(
                cluster.username, cluster.name, cluster.options, wanted, _n_running(cluster)
            )
        except HubError as exc:
            self.log.warning("lease of cluster %s: %s", cluster.name, exc.message)
            return None
        self._leased[cluster.name] = lease.workers
        if lease.message and lease.workers < wanted:
            self._messages[cluster.name] = lease.message
        return lease.workers

    async def forward_message_to_scheduler(self, cluster: Any, msg: dict[str, Any]) -> None:
        if msg.get("op") != "scale" or not isinstance(msg.get("count"), int):
            await super().forward_message_to_scheduler(cluster, msg)
            return
        record = self.db.get_cluster(cluster.name)
        if record is None:
            raise PublicException(f"cluster {cluster.name} is not running")
        await self.scale_within_lease(cluster, record, msg, super().forward_message_to_scheduler)

    async def on_cluster_heartbeat(self, cluster_name: str, msg: dict[str, Any]) -> None:
        cluster = self.db.get_cluster(cluster_name)
        count = msg.get("count")
        if cluster is not None and cluster.target <= JobStatus.RUNNING and isinstance(count, int):
            leased = self._leased.get(cluster_name)
            if leased is None or count > leased:
                granted = await self._lease(cluster, count)
                allowed = granted if granted is not None else (leased or _n_running(cluster))
                if count > allowed:
                    msg = {**msg, "count": allowed}
        await super().on_cluster_heartbeat(cluster_name, msg)

    async def _cluster_to_stopped(self, cluster: Any) -> None:
        await super()._cluster_to_stopped(cluster)
        self._leased.pop(cluster.name, None)
        try:
            await self.hub.release(cluster.username, cluster.name)
        except HubError as exc:  # the lease expires at the hub
            self.log.warning("release of cluster %s: %s", cluster.name, exc.message)

    async def renew_leases(self) -> None:
        """Renew every active cluster's lease with its current size (and what runs)."""
        for cluster in list(self.db.active_clusters()):
            await self._lease(cluster, min(cluster.count, self._leased.get(cluster.name, 0)))
            await self.refresh_cluster(cluster)

    async def refresh_cluster(self, cluster: Any) -> None:
        """Called at each renewal for every active cluster (token files: below)."""


TOKEN_FILE = ".af-bearer-token"  # noqa: S105 - a file name, not a secret


def _read_token(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


class LocalFiles(FacilityBackend):
    """The user's bearer token in the cluster's working directory (``$BEARER_TOKEN_FILE``,
    0600, the user's), rewritten at each renewal when the hub has a new one and removed when
    the login has none any more (as for notebook servers)."""

    pass_bearer_token = Bool(
        True, help="Give clusters the user's bearer token from the hub.", config=True
    )

    def _owner(self, cluster: Any) -> tuple[int, int] | None:
        return None

    async def do_start_cluster(self, cluster: Any) -> Any:
        token = await self._fetch_token(cluster) if self.pass_bearer_token else None
        token_file = None
        async for state in super().do_start_cluster(cluster):
            workdir = state.get("workdir")
            if token_file is None and workdir and token:
                token_file = str(Path(workdir) / TOKEN_FILE)
                _write_token(Path(token_file), token, self._owner(cluster))
            # kept in the cluster's state (the gateway's database): get_env and renewals
            yield {**state, "token_file": token_file} if token_file else state

    async def _fetch_token(self, cluster: Any) -> str | None:
        try:
            return await self.hub.token(cluster.username)
        except HubError as exc:
            self.log.warning("no bearer token for cluster %s: %s", cluster.name, exc.message)
            return None

    def get_env(self, cluster: Any) -> dict[str, str]:
        env: dict[str, str] = super().get_env(cluster)
        token_file = (cluster.state or {}).get("token_file")
        if isinstance(token_file, str):
            env["BEARER_TOKEN_FILE"] = token_file
        return env

    async def refresh_cluster(self, cluster: Any) -> None:
        token_file = (cluster.state or {}).get("token_file")
        if not isinstance(token_file, str):
            return  # started without a token: its processes do not read one
        path = Path(token_file)
        try:
            token = await self.hub.token(cluster.username) or ""
        except HubError as exc:  # keep the file; the next renewal tries again
            self.log.warning("bearer token of cluster %s: %s", cluster.name, exc.message)
            return
        if token != _read_token(path):
            _rewrite_token(path, token)  # "" removes it (the login has no token any more)
            done = "refreshed" if token else "removed"
            self.log.info("%s the bearer token of cluster %s", done, cluster.name)


class AFLocalBackend(LocalFiles, LocalBackend):  # type: ignore[misc]
    """Local processes (a single-machine site) run as the user's uid/gid from the hub.

    The gateway must run as root to switch to them, as dask-gateway's ``LocalBackend``.
    """

    def _ids(self, cluster: Any) -> tuple[int, int, list[int]]:
        config = cluster.config
        uid, gid = int(config.get("uid", -1)), int(config.get("gid", -1))
        if uid < 0 or gid < 0:
            raise PublicException("the cluster has no POSIX identity")
        return uid, gid, [int(g) for g in config.get("supplemental_gids", ())]

    def setup_working_directory(self, cluster: Any) -> str:
        self._chown_to = self._ids(cluster)[:2]
        return str(super().setup_working_directory(cluster))

    def set_file_permissions(self, paths: list[str], username: str) -> None:
        """Give the cluster's working directory (``paths[0]``) and everything in it to the
        user. dask-gateway-server passes the cert and key as characters (``paths.extend``),
        so the list itself is not trusted beyond its first entry."""
        uid, gid = self._chown_to
        workdir = paths[0]
        os.chown(workdir, uid, gid)
        for root, dirs, files in os.walk(workdir):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)

    def make_preexec_fn(self, cluster: Any) -> Any:
        uid, gid, groups = self._ids(cluster)
        workdir = cluster.state["workdir"]

        def preexec() -> None:  # pragma: no cover - runs in the child
            os.setgid(gid)
            os.setgroups(groups)
            os.setuid(uid)
            os.chdir(workdir)

        return preexec

    def get_env(self, cluster: Any) -> dict[str, str]:
        env: dict[str, str] = super().get_env(cluster)
        env["HOME"] = cluster.state.get("workdir", "/tmp")  # noqa: S108
        return env

    def _owner(self, cluster: Any) -> tuple[int, int] | None:
        uid, gid, _ = self._ids(cluster)
        return uid, gid


class AFUnsafeLocalBackend(LocalFiles, UnsafeLocalBackend):  # type: ignore[misc]
    """Local processes as the gateway's own user (demo and tests only: no separation);
    the policy, the options and the quota apply all the same."""
