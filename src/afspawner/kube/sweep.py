"""One sweep pass over the project's pods and Secrets (thin I/O around a pure decision).

Secrets, then pods, come from one labelled LIST each per namespace (not from the informer: a
consistent snapshot even while the informer catches up after an apiserver restart; a spawn
creates its pod before its Secrets, so every Secret seen has its pod in the later LIST). The
hub's view is read only after both were observed, so an object of a spawn that begins
meanwhile is never taken for an orphan. :func:`afspawner.ownership.find_orphans` decides;
every deletion names the uid it saw (a precondition), so a new object of that name is never
hit.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

from kubernetes_asyncio import client

from afspawner.kube.client import KubeError, request
from afspawner.manifests import server_of
from afspawner.ownership import Observed, ServerKey, find_orphans

log = logging.getLogger("afspawner.sweep")


def _age(meta: Mapping[str, Any], now: dt.datetime) -> float:
    created = meta.get("creationTimestamp")
    if not isinstance(created, str):
        return 0.0
    try:
        when = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        return 0.0
    return (now - when).total_seconds()


def observe(obj: Mapping[str, Any], now: dt.datetime) -> Observed:
    """What the decision needs from a pod or Secret."""
    meta = obj.get("metadata") or {}
    owners = tuple(
        str(ref.get("uid"))
        for ref in meta.get("ownerReferences") or []
        if ref.get("kind") == "Pod" and ref.get("uid")
    )
    return Observed(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        key=server_of(obj),
        age=_age(meta, now),
        owners=owners,
        deleting=bool(meta.get("deletionTimestamp")),
    )


async def list_labelled(
    api: client.ApiClient, kind: str, namespaces: Iterable[str], selector: str
) -> list[dict[str, Any]]:
    """Every ``kind`` (pods, secrets) with the labels of ``selector`` in ``namespaces``."""
    found: list[dict[str, Any]] = []
    for ns in namespaces:
        query: dict[str, Any] = {"labelSelector": selector, "limit": 500}
        while True:
            page = await request(api, "GET", f"/api/v1/namespaces/{ns}/{kind}", query)
            found.extend(page.get("items") or [])
            cont = (page.get("metadata") or {}).get("continue")
            if not cont:
                break
            query["continue"] = cont
    return found


async def _delete(api: client.ApiClient, kind: str, obj: Observed) -> bool:
    """Delete exactly the object seen (uid precondition); ``False`` if it is gone already."""
    body = {
        "kind": "DeleteOptions",
        "apiVersion": "v1",
        "gracePeriodSeconds": 0,
        "propagationPolicy": "Background",
        "preconditions": {"uid": obj.uid},
    }
    try:
        await request(
            api, "DELETE", f"/api/v1/namespaces/{obj.namespace}/{kind}/{obj.name}", body=body
        )
    except KubeError as exc:
        if exc.status in (404, 409):  # gone, or replaced by a new object of that name
            return False
        raise
    return True


async def sweep_once(
    api: client.ApiClient,
    namespaces: Collection[str],
    selector: str,
    keep: Callable[[], Collection[ServerKey]],
    grace: float,
) -> int:
    """Delete the orphan pods and Secrets in ``namespaces``; returns how many were deleted."""
    secrets = await list_labelled(api, "secrets", namespaces, selector)
    pods = await list_labelled(api, "pods", namespaces, selector)
    now = dt.datetime.now(dt.UTC)
    seen_pods = [observe(p, now) for p in pods]
    seen_secrets = [observe(s, now) for s in secrets]
    orphans = find_orphans(seen_pods, seen_secrets, keep(), grace)
    removed = 0
    for kind, objs in (("pods", orphans.pods), ("secrets", orphans.secrets)):
        for obj in objs:
            if await _delete(api, kind, obj):
                removed += 1
                who = f" of {obj.key[0]}/{obj.key[1]}" if obj.key else ""
                log.warning(
                    "sweep: deleted orphan %s %s/%s%s (no such server at the hub)",
                    kind[:-1],
                    obj.namespace,
                    obj.name,
                    who,
                )
    return removed
