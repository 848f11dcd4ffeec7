"""The hub side of Dask clusters: a scoped hub API the Dask Gateway calls (docs/dask.md).

The hub's quota :class:`~afspawner.quota.Ledger` is the one source of truth for notebook
servers *and* Dask clusters. The gateway (a JupyterHub service whose role holds
``custom:af-dask:lease``) asks it:

- ``GET /hub/api/af/dask/users/<name>``: who the user is as the spawner sees them (VOs from
  the login, hub groups) and the cluster options they are offered;
- ``PUT /hub/api/af/dask/leases/<name>/<cluster>`` ``{"options", "workers", "running"}``: the
  hub resolves the options again with the user's VOs (a forged set is refused), and reserves
  the scheduler and as many workers as fit, in one synchronous step with the notebook
  admissions; the answer says how many (``{"workers": n, "message": ...}``);
- ``DELETE /hub/api/af/dask/leases/<name>/<cluster>``: release.

A lease lives ``lease_ttl`` seconds unless renewed (the gateway renews every cluster
periodically, which also rebuilds the ledger after a hub restart); the sweep keeps unexpired
leases and releases the others. Installed by :func:`setup`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Any

from jupyterhub.apihandlers import APIHandler
from jupyterhub.scopes import Scope
from tornado import web

from afspawner import pipeline
from afspawner.daskpolicy import (
    LEASE_PREFIX,
    grant_workers,
    lease_name,
    option_spec,
    parse_cluster_options,
    resolve_cluster,
)
from afspawner.handlers import PROBE, runtime_of
from afspawner.hubview import HubView
from afspawner.ownership import ServerKey
from afspawner.plan import UserIdentity
from afspawner.policy import Refusal, UserContext
from afspawner.runtime import Runtime
from afspawner.uid import resolve_identity, sources_for

SCOPE = "custom:af-dask:lease"
DESCRIPTION = (
    "Reserve and release Dask clusters in the facility's quota and read users' VOs "
    "(held by the Dask Gateway service)."
)
DEFAULT_TTL = 300.0
MAX_WORKERS_ASKED = 1_000_000


class Leases:
    """The unexpired Dask leases of one runtime: ledger key → expiry (monotonic seconds)."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.expiry: dict[ServerKey, float] = {}

    def renew(self, key: ServerKey, now: float) -> None:
        self.expiry[key] = now + self.ttl

    def drop(self, key: ServerKey) -> None:
        self.expiry.pop(key, None)

    def live(self, now: float | None = None) -> frozenset[ServerKey]:
        now = time.monotonic() if now is None else now
        return frozenset(k for k, t in self.expiry.items() if t > now)

    def expire(self, rt: Runtime, now: float) -> None:
        """Release the reservations of leases past their expiry (and forget them)."""
        for key, t in list(self.expiry.items()):
            if t <= now:
                del self.expiry[key]
                rt.ledger.release(*key)


_leases: dict[int, tuple[Runtime, Leases]] = {}


def leases_of(rt: Runtime, ttl: float) -> Leases:
    """The runtime's lease table, registered once with its hub view (the sweep keeps them)."""
    found = _leases.get(id(rt))
    if found is not None and found[0] is rt:
        return found[1]
    leases = Leases(ttl)
    _leases[id(rt)] = (rt, leases)
    if isinstance(rt.hub_view, HubView):
        rt.hub_view.also_busy.append(leases.live)
    return leases


class _DaskAPI(APIHandler):  # type: ignore[misc]
    def _check_scope(self) -> None:
        if self.current_user is None:
            raise web.HTTPError(403, "Missing or invalid credentials.")
        parsed: Mapping[str, Any] = getattr(self, "parsed_scopes", {}) or {}
        if parsed.get(SCOPE) != Scope.ALL:
            raise web.HTTPError(
                403, f"Action is not authorized with current scopes; requires {SCOPE}"
            )

    async def _setup(self) -> tuple[Runtime, Leases]:
        self._check_scope()
        rt = runtime_of(self)
        await rt.ensure_restored()
        ttl = float(self.settings.get("af_dask_lease_ttl", DEFAULT_TTL))
        leases = leases_of(rt, ttl)
        leases.expire(rt, time.monotonic())
        return rt, leases

    async def _user(self, rt: Runtime, name: str) -> UserContext:
        return (await self._user_state(rt, name))[0]

    async def _user_state(self, rt: Runtime, name: str) -> tuple[UserContext, Mapping[str, Any]]:
        user = self.find_user(name)
        if user is None:
            raise web.HTTPError(404, f"no such user {name[:40]!r}")
        state = await user.get_auth_state()
        state = state if isinstance(state, Mapping) else {}
        context = pipeline.user_context(
            rt.facility,
            user.name,
            (g.name for g in user.groups),
            state.get("vos") or (),
            bool(user.admin),
        )
        return context, state

    async def _identity(
        self, rt: Runtime, name: str, state: Mapping[str, Any]
    ) -> UserIdentity | str:
        """The POSIX identity the user's servers run as (the spawner's uid sources), or why
        there is none."""
        probe: Any = self.settings.get(PROBE)
        sources = list(sources_for(probe.uid_config(), state))
        try:
            return await asyncio.to_thread(
                resolve_identity, name, sources, state, rt.static_ids, rt.pool
            )
        except Refusal as exc:
            return exc.message

    def _refuse(self, exc: Refusal) -> None:
        self.set_status(exc.status)
        self.finish(json.dumps({"status": exc.status, "message": exc.message}))


class DaskUserAPI(_DaskAPI):
    """``GET /hub/api/af/dask/users/<name>``: VOs, groups and offered cluster options."""

    async def get(self, name: str) -> None:
        rt, _ = await self._setup()
        user, state = await self._user_state(rt, name)
        spec = option_spec(rt.facility, user)
        identity = await self._identity(rt, user.name, state)
        self.finish(
            json.dumps(
                {
                    "name": user.name,
                    "vos": list(user.vos),
                    "groups": sorted(user.groups),
                    "admin": user.admin,
                    "options": dataclasses.asdict(spec),
                    "identity": dataclasses.asdict(identity)
                    if isinstance(identity, UserIdentity)
                    else None,
                    "identity_problem": identity if isinstance(identity, str) else None,
                }
            )
        )


class DaskTokenAPI(_DaskAPI):
    """``GET /hub/api/af/dask/users/<name>/token``: the user's bearer token for their Dask
    processes (``{"token": null}`` when there is none or ``AFSpawner.pass_bearer_token`` is
    off). Never logged."""

    async def get(self, name: str) -> None:
        rt, _ = await self._setup()
        _, state = await self._user_state(rt, name)
        probe: Any = self.settings.get(PROBE)
        token = state.get("access_token") if probe.pass_bearer_token else None
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps({"token": token if isinstance(token, str) and token else None}))


class DaskLeaseAPI(_DaskAPI):
    """``PUT``/``DELETE /hub/api/af/dask/leases/<name>/<cluster>``."""

    async def put(self, name: str, cluster: str) -> None:
        rt, leases = await self._setup()
        user = await self._user(rt, name)
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "the body must be JSON") from None
        if not isinstance(body, Mapping):
            raise web.HTTPError(400, "the body must be a JSON object")
        workers, running = body.get("workers", 0), body.get("running", 0)
        for what, n in (("workers", workers), ("running", running)):
            if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_WORKERS_ASKED:
                raise web.HTTPError(400, f"{what} must be a whole number from 0")
        try:
            plan = resolve_cluster(rt.facility, user, parse_cluster_options(body.get("options")))
            # no await from here to the reservation: one step on the hub's event loop
            grant = grant_workers(rt.facility, rt.ledger, plan, cluster, workers, running)
        except Refusal as exc:
            self.log.warning("dask cluster %s/%s refused: %s", name, cluster[:40], exc.message)
            self._refuse(exc)
            return
        leases.renew((user.name, lease_name(cluster)), time.monotonic())
        self.finish(
            json.dumps(
                {
                    "workers": grant.workers,
                    "message": grant.message,
                    "max_workers": plan.max_workers,
                    "vo": plan.vo,
                }
            )
        )

    async def delete(self, name: str, cluster: str) -> None:
        rt, leases = await self._setup()
        try:
            key = (name, lease_name(cluster))
        except Refusal as exc:
            self._refuse(exc)
            return
        leases.drop(key)
        released = rt.ledger.release(*key)
        self.set_status(200 if released is not None else 404)
        self.finish(json.dumps({"released": released is not None}))


def setup(c: Any, lease_ttl: float = DEFAULT_TTL) -> None:
    """Add the Dask API and its scope to the hub configuration ``c`` (``jupyterhub_config.py``).

    The gateway's service gets the scope through a role (docs/dask.md)."""
    hub = c.JupyterHub
    hub.extra_handlers.extend(
        [
            (r"/api/af/dask/users/([^/]+)", DaskUserAPI),
            (r"/api/af/dask/users/([^/]+)/token", DaskTokenAPI),
            (r"/api/af/dask/leases/([^/]+)/([^/]+)", DaskLeaseAPI),
        ]
    )
    hub.custom_scopes.update({SCOPE: {"description": DESCRIPTION}})
    settings = hub.tornado_settings
    if isinstance(settings, dict):
        hub.tornado_settings = {**settings, "af_dask_lease_ttl": float(lease_ttl)}
    else:
        settings.update({"af_dask_lease_ttl": float(lease_ttl)})


__all__ = [
    "LEASE_PREFIX",
    "SCOPE",
    "DaskLeaseAPI",
    "DaskTokenAPI",
    "DaskUserAPI",
    "Leases",
    "setup",
]
