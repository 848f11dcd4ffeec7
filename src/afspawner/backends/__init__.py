"""Where servers run: the backend interface and the registry of backends."""

from __future__ import annotations

from afspawner.backends.base import Backend, LaunchFailed, ProgressSink, Started
from afspawner.registry import GROUPS, Registry


def _is_backend(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, Backend)


def backends() -> Registry[type[Backend]]:
    return Registry(GROUPS["backends"], "backend", _is_backend)


__all__ = ["Backend", "LaunchFailed", "ProgressSink", "Started", "backends"]
