"""Reading pod status (pure): ready, or failed with the Kubernetes reason."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

# Waiting reasons after which the pod will not become ready by itself.
FATAL_WAITING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
        "CrashLoopBackOff",
    }
)


def _time(value: object) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def pod_ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    if status.get("phase") != "Running" or not status.get("podIP"):
        return False
    conditions = status.get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _unschedulable(pod: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The pod's PodScheduled=False/Unschedulable condition, if it has one."""
    for cond in ((pod or {}).get("status") or {}).get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            return cond  # type: ignore[no-any-return]
    return None


def unschedulable_deadline(
    pod: Mapping[str, Any] | None, unschedulable_grace: float
) -> dt.datetime | None:
    """When :func:`pod_failure` will call this pod unschedulable if nothing changes (its
    Unschedulable condition's transition time plus the grace), or ``None``: no verdict of
    ``pod_failure`` waits on the clock alone, so only a change of the pod can bring one."""
    cond = _unschedulable(pod)
    since = _time(cond.get("lastTransitionTime")) if cond else None
    return None if since is None else since + dt.timedelta(seconds=unschedulable_grace)


def pod_failure(pod: Mapping[str, Any], now: dt.datetime, unschedulable_grace: float) -> str | None:
    """Why the pod cannot start, in Kubernetes' words, or ``None`` while it still may."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return "the pod is being deleted"
    phase = status.get("phase")
    if phase in ("Failed", "Succeeded"):
        reason = status.get("reason") or phase
        return f"the pod {phase.lower()}: {reason} {status.get('message') or ''}".strip()
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in FATAL_WAITING:
            detail = waiting.get("message") or ""
            return f"{reason}: {detail}".strip().rstrip(":") + f" (container {cs.get('name')})"
        terminated = (cs.get("state") or {}).get("terminated") or {}
        if terminated and cs.get("restartCount", 0) >= 3:
            return (
                f"container {cs.get('name')} keeps exiting (code "
                f"{terminated.get('exitCode')}, {terminated.get('reason') or 'Error'})"
            )
    cond = _unschedulable(pod)
    if cond is not None:
        since = _time(cond.get("lastTransitionTime")) or now
        if (now - since).total_seconds() >= unschedulable_grace:
            return f"Unschedulable: {cond.get('message') or 'no node fits the server'}"
    return None


def exit_status(pod: Mapping[str, Any] | None) -> int | None:
    """``None`` while the pod runs (or starts); an exit status once it is gone or done."""
    if pod is None:
        return 0
    status = pod.get("status") or {}
    phase = status.get("phase")
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return 0
    if phase == "Succeeded":
        return 0
    if phase == "Failed":
        for cs in status.get("containerStatuses") or []:
            code = ((cs.get("state") or {}).get("terminated") or {}).get("exitCode")
            if isinstance(code, int) and code:
                return code
        return 1
    return None
