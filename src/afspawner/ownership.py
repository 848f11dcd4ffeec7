"""Which objects and reservations belong to a server the hub knows (pure; no I/O).

The hub's own view of its servers (:class:`ServerView`: the servers with a row in its
database, plus spawns and stops in progress in this process) is the truth. A labelled pod or
Secret that belongs to no server of that view is an orphan, and a quota reservation for a
server outside it is released; a running pod of a known server that the ledger lacks is
counted again. The sweep (:mod:`afspawner.kube.sweep`) and the runtime apply these decisions.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from afspawner.names import pod_name
from afspawner.quota import Reservation

ServerKey = tuple[str, str]  # (username, server name; "" for the default server)

TOKEN_SUFFIX = "-token"  # noqa: S105 - the name suffix of a server's bearer-token Secret


@dataclass(frozen=True)
class ServerView:
    """The hub's servers: ``servers`` have a server row; ``busy`` are starting or stopping
    in this process (their objects and reservations are left to the spawn or stop)."""

    servers: frozenset[ServerKey] = frozenset()
    busy: frozenset[ServerKey] = frozenset()

    @property
    def keep(self) -> frozenset[ServerKey]:
        return self.servers | self.busy


@dataclass(frozen=True)
class Observed:
    """A labelled pod or Secret as seen on the cluster.

    ``key`` comes from the object's annotations (``None`` when it has none); ``owners`` are the
    uids of the pods a Secret names in its ``ownerReferences``; ``age`` is seconds since it
    was created.
    """

    namespace: str
    name: str
    uid: str
    key: ServerKey | None = None
    age: float = 0.0
    owners: tuple[str, ...] = ()
    deleting: bool = False


@dataclass(frozen=True)
class Orphans:
    pods: tuple[Observed, ...] = ()
    secrets: tuple[Observed, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.pods or self.secrets)


def _pod_key(pod: Observed, by_name: dict[str, ServerKey]) -> ServerKey | None:
    return pod.key if pod.key is not None else by_name.get(pod.name)


def _secret_pod_names(secret: Observed) -> tuple[str, ...]:
    """The pod names a Secret without owner may belong to (server Secret or token Secret)."""
    if secret.name.endswith(TOKEN_SUFFIX):
        return (secret.name, secret.name[: -len(TOKEN_SUFFIX)])
    return (secret.name,)


def find_orphans(
    pods: Iterable[Observed],
    secrets: Iterable[Observed],
    keep: Collection[ServerKey],
    grace: float,
) -> Orphans:
    """The pods and Secrets to delete.

    - A pod (not already being deleted) is an orphan when its server (annotations, else its
      deterministic name) is not in ``keep``.
    - A Secret younger than ``grace`` seconds is never an orphan: a spawn creates its pod
      first and its Secrets a moment later, and the informer may lag behind.
    - An older Secret with owners is an orphan unless one owner is a pod that stays
      (garbage collection removes it too; deleting it here does not wait for that).
    - An older Secret without owner (made before ownership existed, or by hand) is an orphan
      unless a pod that stays in its namespace has its name (or, for ``<pod>-token``, the
      pod's name).
    """
    pods = tuple(pods)
    by_name = {pod_name(user, server): (user, server) for user, server in keep}
    orphan_pods: list[Observed] = []
    staying: list[Observed] = []
    for pod in pods:
        if pod.deleting:
            continue
        key = _pod_key(pod, by_name)
        (staying if key is not None and key in keep else orphan_pods).append(pod)
    staying_uids = {p.uid for p in staying}
    staying_names = {(p.namespace, p.name) for p in staying}
    orphan_secrets: list[Observed] = []
    for secret in secrets:
        if secret.deleting or secret.age < grace:
            continue
        if secret.owners:
            stays = any(uid in staying_uids for uid in secret.owners)
        else:
            stays = any(
                (secret.namespace, name) in staying_names for name in _secret_pod_names(secret)
            )
        if not stays:
            orphan_secrets.append(secret)
    return Orphans(tuple(orphan_pods), tuple(orphan_secrets))


@dataclass(frozen=True)
class LedgerChanges:
    """What makes the ledger equal the hub's servers: keys to release, reservations to add."""

    release: tuple[ServerKey, ...] = ()
    restore: tuple[Reservation, ...] = field(default=())

    def __bool__(self) -> bool:
        return bool(self.release or self.restore)


def ledger_changes(
    held: Iterable[Reservation], running: Iterable[Reservation], view: ServerView
) -> LedgerChanges:
    """Compare the ledger (``held``) with the servers the backend runs (``running``).

    A held reservation is released when its server is neither known to the hub nor busy in
    this process. A running server known to the hub, not busy, and missing from the ledger
    is counted again (from what its pod says it reserved). Busy servers are left alone: their
    spawn admits and their stop releases.
    """
    held = tuple(held)
    held_keys = {(r.username, r.server_name) for r in held}
    release = tuple(
        sorted(
            (r.username, r.server_name)
            for r in held
            if (r.username, r.server_name) not in view.keep
        )
    )
    restore: dict[ServerKey, Reservation] = {}
    for r in running:
        key = (r.username, r.server_name)
        if key in view.servers and key not in view.busy and key not in held_keys:
            restore.setdefault(key, r)
    return LedgerChanges(release, tuple(restore[k] for k in sorted(restore)))
