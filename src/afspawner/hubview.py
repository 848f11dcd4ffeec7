"""The hub's own view of its servers: its database, plus spawns and stops in this process.

JupyterHub adds a server row at the very beginning of a spawn (before ``start``) and removes
it when the server stops, so the rows are the servers the hub considers running or pending.
Spawners that are starting or stopping in this process are added (a stop removes the row
before it finishes). The sweep and the ledger compare everything with this view.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import Any

from jupyterhub import orm

from afspawner.ownership import ServerKey, ServerView


def servers_with_a_row(db: Any) -> frozenset[ServerKey]:
    """``(username, server name)`` of every spawner with a server row in the hub database."""
    rows = (
        db.query(orm.User.name, orm.Spawner.name)
        .join(orm.Spawner, orm.Spawner.user_id == orm.User.id)
        .filter(orm.Spawner.server_id.isnot(None))
        .all()
    )
    return frozenset((str(user), str(server or "")) for user, server in rows)


def busy(spawner: Any) -> bool:
    """Starting or stopping now, in this process."""
    return bool(
        getattr(spawner, "_spawn_pending", False)
        or getattr(spawner, "_start_pending", False)
        or getattr(spawner, "_stop_pending", False)
    )


class HubView:
    """Callable view over the hub database session and the live spawners of this process."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self._spawners: weakref.WeakSet[Any] = weakref.WeakSet()
        # more keys the sweep leaves alone (afspawner.daskapi: the Dask clusters' leases)
        self.also_busy: list[Callable[[], Iterable[ServerKey]]] = []

    def add(self, spawner: Any) -> None:
        self._spawners.add(spawner)

    def busy(self) -> frozenset[ServerKey]:
        keys = {(str(s.user.name), str(s.name or "")) for s in list(self._spawners) if busy(s)}
        for source in self.also_busy:
            keys.update(source())
        return frozenset(keys)

    def __call__(self) -> ServerView:
        return ServerView(servers_with_a_row(self.db), self.busy())
