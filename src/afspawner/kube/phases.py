"""Where a ready pod spent its start-up, from its own status timestamps (pure).

Kubernetes records, on the pod itself:

- ``metadata.creationTimestamp``: the apiserver stored the pod;
- the ``PodScheduled`` condition's ``lastTransitionTime``: a node was chosen;
- ``status.containerStatuses[].state.running.startedAt``: each container started (after the
  image pull, the sandbox and the volume mounts);
- the ``Ready`` condition's ``lastTransitionTime``: the pod became ready.

:func:`pod_phases` turns them into seconds per phase: ``scheduling`` (created → scheduled),
``image_pull`` (scheduled → the last container started: image pull, sandbox and mounts) and
``ready`` (started → Ready). Kubernetes writes these times with a resolution of one second, so a
phase is accurate to about a second. A phase whose timestamps are missing is left out;
a negative difference (clock skew between nodes and the apiserver) counts as 0.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

POD_PHASES = ("scheduling", "image_pull", "ready")


def _time(value: object) -> dt.datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=dt.UTC)


def _condition_time(conditions: Iterable[Any], kind: str) -> dt.datetime | None:
    for cond in conditions:
        if isinstance(cond, Mapping) and cond.get("type") == kind and cond.get("status") == "True":
            return _time(cond.get("lastTransitionTime"))
    return None


def _containers_started(statuses: Iterable[Any]) -> dt.datetime | None:
    """When the last container started running; ``None`` unless every one of them runs."""
    times: list[dt.datetime] = []
    for status in statuses:
        state = status.get("state") if isinstance(status, Mapping) else None
        running = state.get("running") if isinstance(state, Mapping) else None
        started = _time(running.get("startedAt")) if isinstance(running, Mapping) else None
        if started is None:
            return None
        times.append(started)
    return max(times) if times else None


def _seconds(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max((end - start).total_seconds(), 0.0)


def pod_phases(pod: Mapping[str, Any]) -> dict[str, float]:
    """Seconds per start-up phase of ``pod`` (``scheduling``, ``image_pull``, ``ready``)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    conditions = status.get("conditions") or []
    created = _time(meta.get("creationTimestamp"))
    scheduled = _condition_time(conditions, "PodScheduled")
    started = _containers_started(status.get("containerStatuses") or [])
    ready = _condition_time(conditions, "Ready")
    found = {
        "scheduling": _seconds(created, scheduled),
        "image_pull": _seconds(scheduled, started),
        "ready": _seconds(started, ready),
    }
    return {name: value for name, value in found.items() if value is not None}
