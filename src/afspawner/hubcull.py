"""Hub-side enforcement of the idle and lifetime limits: read the hub's activity records, let
:func:`afspawner.culling.decide` choose, stop through the hub's own stop path.

The records are JupyterHub's: ``orm.Spawner.started`` and ``last_activity`` (kept up to date by
the hub from the proxy's routes and the servers' activity reports). A server is stopped the way
the hub's REST API stops one (its route removed from the proxy, then ``User.stop``), so
``AFSpawner.stop`` runs and releases its quota and GPU reservation at once, and the hub's
database says "stopped". The reason is kept in the spawner's saved state (see
``AFSpawner.note_stop``) and shown on the spawn page and, with :func:`stop_notices` in
``c.JupyterHub.template_vars``, on the home page.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from jupyterhub import orm

from afspawner.culling import (
    NOTICE_KEY,
    Cull,
    Lifetime,
    ServerActivity,
    decide,
    has_limits,
    lifetime,
    notice,
    notice_message,
)
from afspawner.facility import Facility

log = logging.getLogger("afspawner.culling")


def _flavor(state: object) -> str | None:
    af = state.get("af") if isinstance(state, Mapping) else None
    flavor = af.get("flavor") if isinstance(af, Mapping) else None
    return flavor if isinstance(flavor, str) else None


def running_servers(db: Any) -> list[ServerActivity]:
    """Every server with a row in the hub database, with its activity record and flavor."""
    rows = (
        db.query(orm.User.name, orm.Spawner)
        .join(orm.Spawner, orm.Spawner.user_id == orm.User.id)
        .filter(orm.Spawner.server_id.isnot(None))
        .all()
    )
    return [
        ServerActivity(
            str(name), str(sp.name or ""), _flavor(sp.state), sp.started, sp.last_activity
        )
        for name, sp in rows
    ]


class HubCuller:
    """One pass per call: ``await culler()`` → the number of servers it stopped."""

    def __init__(self, settings: Mapping[str, Any], db: Any, facility: Facility) -> None:
        self.settings = settings  # the hub's tornado settings (users, proxy)
        self.db = db
        self.facility = facility
        self._lifetimes: dict[str | None, Lifetime] = {}

    def lifetime_of(self, flavor: str | None) -> Lifetime:
        if flavor not in self._lifetimes:
            self._lifetimes[flavor] = lifetime(self.facility, flavor)
        return self._lifetimes[flavor]

    async def __call__(self) -> int:
        now = datetime.now(UTC)
        stopped = 0
        for cull in decide(running_servers(self.db), self.lifetime_of, now):
            if await self._stop(cull, now):
                stopped += 1
        return stopped

    async def _stop(self, cull: Cull, now: datetime) -> bool:
        users, proxy = self.settings.get("users"), self.settings.get("proxy")
        if users is None or proxy is None:
            return False
        try:
            user = users[cull.username]
        except KeyError:
            return False
        spawner = user.spawners[cull.server_name]
        if spawner.pending or not spawner.active:  # starting, stopping, or already stopped
            return False
        message = cull.message(now)
        log.info("stopping %s: %s", spawner._log_name, message)
        note = getattr(spawner, "note_stop", None)
        if callable(note):
            note(notice(cull, now))
        spawner._stop_pending = True  # as the hub's stop API does: no second stop meanwhile
        try:
            try:
                await proxy.delete_user(user, cull.server_name)
            except Exception as exc:  # the hub's own route check removes it later
                log.warning("could not remove the route of %s: %s", spawner._log_name, exc)
            await user.stop(cull.server_name)
        except Exception as exc:
            spawner._stop_pending = False
            log.warning("could not stop %s (%s: %s)", spawner._log_name, type(exc).__name__, exc)
            return False
        return True


def attach(runtime: Any, spawner: Any, interval: float) -> None:
    """Start the culling task of ``runtime`` (once) if any flavor has a limit; see
    ``Runtime.start_culling``. Called where the spawner attaches the runtime's sweep."""
    settings = getattr(spawner.user, "settings", None)
    db = getattr(spawner.user, "db", None)
    if interval <= 0 or settings is None or db is None or not has_limits(runtime.facility):
        return
    runtime.start_culling(HubCuller(settings, db, runtime.facility), interval)


def stop_notices(user: Any) -> str | None:
    """For ``c.JupyterHub.template_vars = {"announcement_home": stop_notices}``: why the hub
    stopped the user's servers that are still stopped (HTML), or None, so that the home page
    shows the site's general ``announcement`` instead."""
    orm_user = getattr(user, "orm_user", None)
    if orm_user is None:
        return None
    messages = []
    for sp in orm_user.orm_spawners.values():
        state = sp.state if isinstance(sp.state, Mapping) else {}
        message = notice_message(state.get(NOTICE_KEY))
        if message and sp.server_id is None:
            messages.append(html.escape(message))
    return "<br>".join(messages) or None
