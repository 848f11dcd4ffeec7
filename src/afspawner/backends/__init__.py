"""Where servers run: the backend interface and the registry of backends."""

from __future__ import annotations

import functools

from afcore.registry import Registry
from afspawner.backends.base import (
    Backend,
    CapacityListener,
    LaunchFailed,
    LaunchRequest,
    ProgressSink,
    Started,
)

GROUP = "afspawner.backends"  # entry-point group of backends


def _is_backend(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, Backend)


@functools.cache
def backends() -> Registry[type[Backend]]:
    """Registry of installed backends (one per process; entry points are scanned once)."""
    return Registry(GROUP, "backend", _is_backend)


__all__ = [
    "GROUP",
    "Backend",
    "CapacityListener",
    "LaunchFailed",
    "LaunchRequest",
    "ProgressSink",
    "Started",
    "backends",
]
