"""What really exists, read from the cluster and compared with the hub's own view.

Every object the project creates carries ``app.kubernetes.io/managed-by=jupyterhub-af`` and
the ``af.jupyterhub.org/user`` / ``af.jupyterhub.org/server`` labels (``default`` for the
default server). An *orphan* is such a pod or Secret whose (user, server) is not a server the
hub considers running or pending. The chaos tests use plain user names, which are their own
label values.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from chaos.harness import RealHub, SpawnOutcome
from integration.spawnkit import kube_http
from testbed.k8s import KubeCluster

MANAGED = "app.kubernetes.io/managed-by=jupyterhub-af"
USER_LABEL = "af.jupyterhub.org/user"
SERVER_LABEL = "af.jupyterhub.org/server"
VO_LABEL = "af.jupyterhub.org/vo"
ORPHAN_WAIT = 90.0  # the issue: orphans are deleted within a bounded time ("say 60 s")


def owner(obj: dict[str, Any]) -> tuple[str, str]:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    server = labels.get(SERVER_LABEL, "default")
    return labels.get(USER_LABEL, "?"), "" if server == "default" else server


def name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name"))


async def labelled(cluster: KubeCluster, namespace: str, kind: str) -> list[dict[str, Any]]:
    """The project's pods or secrets in ``namespace``."""
    async with kube_http(cluster) as k:
        r = await k.get(f"/api/v1/namespaces/{namespace}/{kind}", params={"labelSelector": MANAGED})
        r.raise_for_status()
        return list(r.json()["items"])


def counts_as_server(pod: dict[str, Any]) -> bool:
    """A pod that holds a server: not being deleted, not finished."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


@dataclass
class Orphans:
    pods: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.pods) + len(self.secrets)

    def as_dict(self) -> dict[str, Any]:
        return {"pods": len(self.pods), "secrets": len(self.secrets)}


async def orphans(hub: RealHub) -> Orphans:
    """Project objects that belong to no server the hub considers running or pending.

    The cluster is read first: an object created after that by a spawn in flight cannot show
    up as an orphan; one whose server the hub stops meanwhile is caught by the next poll.
    """
    pods = await labelled(hub.cluster, hub.namespace, "pods")
    secrets = await labelled(hub.cluster, hub.namespace, "secrets")
    active = set(await hub.servers())
    return Orphans(
        pods=sorted(name(p) for p in pods if owner(p) not in active),
        secrets=sorted(name(s) for s in secrets if owner(s) not in active),
    )


async def wait_no_orphans(hub: RealHub, within: float = ORPHAN_WAIT) -> tuple[Orphans, Orphans]:
    """Poll until no orphan is left or ``within`` s pass: (found at first, left at the end)."""
    first = last = await orphans(hub)
    deadline = time.monotonic() + within
    while last.total and time.monotonic() < deadline:
        await asyncio.sleep(2)
        last = await orphans(hub)
    return first, last


async def running_in(hub: RealHub, users: Iterable[str]) -> list[str]:
    """Users of the list with a server the hub considers running or pending."""
    wanted = set(users)
    return sorted(u for u, _ in await hub.servers() if u in wanted)


@dataclass
class Checks:
    """Soft assertions: every failed check is reported, not only the first one."""

    failures: list[str] = field(default_factory=list)

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.failures.append(message)

    def done(self) -> None:
        assert not self.failures, "\n".join(f"- {f}" for f in self.failures)


async def check_orphans(hub: RealHub, checks: Checks, figures: dict[str, Any], tag: str) -> None:
    first, last = await wait_no_orphans(hub)
    figures.setdefault("orphans", {})[tag] = {"found": first.as_dict(), "left": last.as_dict()}
    checks.check(
        last.total == 0,
        f"{tag}: orphans left {ORPHAN_WAIT:.0f}s after the hub settled: "
        f"pods {last.pods}, secrets {last.secrets}",
    )


async def check_ledger(
    hub: RealHub,
    quota: int,
    spares: list[str],
    checks: Checks,
    figures: dict[str, Any],
    tag: str,
) -> None:
    """Ledger = truth, behaviourally: with quota N and k servers running, exactly N-k more
    spawns are admitted. ``spares`` are users of the VO that took no part in the chaos (so
    no leftover of theirs is replaced by their spawn); N-k+1 of them spawn at once."""
    k = len(await hub.servers())  # one VO per hub: every server counts
    wanted = max(quota - k, 0)
    assert len(spares) > wanted, f"{tag}: {len(spares)} spare users for {wanted + 1} spawns"
    assert not set(await running_in(hub, spares)), f"{tag}: spare users must be stopped"
    outcomes = await asyncio.gather(*(hub.spawn(u) for u in spares[: wanted + 1]))
    admitted = [o for o in outcomes if o.result == "ready"]
    refused = [o for o in outcomes if o.result != "ready"]
    figures.setdefault("ledger", {})[tag] = {
        "quota": quota,
        "running": k,
        "admitted": len(admitted),
        "expected": wanted,
        "refusals": sorted({o.message for o in refused})[:5],
    }
    checks.check(
        len(admitted) == wanted,
        f"{tag}: quota {quota} servers, {k} running (hub view) -> expected {wanted} more "
        f"admitted, got {len(admitted)}; refusals: {describe(refused)}",
    )
    await hub.stop_all(spares)


def describe(outcomes: Iterable[SpawnOutcome], limit: int = 4) -> str:
    seen: dict[str, int] = {}
    for o in outcomes:
        key = f"{o.result} {o.status}: {o.message[:160]}"
        seen[key] = seen.get(key, 0) + 1
    parts = [f"{n} x {k}" for k, n in sorted(seen.items(), key=lambda kv: -kv[1])]
    return "; ".join(parts[:limit]) or "none"


RAW_ERROR_MARKERS = (
    "Traceback",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ClientOSError",
    "aiohttp",
    "Errno",
    "object has no attribute",
    "Unhandled error",
    "Internal Server Error",
    "no failure message",
)


def clear_failure(message: str) -> bool:
    """A failure a user can act on: a sentence from the spawner, not a raw client exception."""
    text = message.strip()
    return len(text) > 15 and not any(m in text for m in RAW_ERROR_MARKERS)
