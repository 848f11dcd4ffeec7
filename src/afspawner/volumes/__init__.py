"""Volume types: the plugin interface, built-ins, and the entry-point registry."""

from __future__ import annotations

import functools

from afspawner.registry import GROUPS, Registry
from afspawner.volumes.base import Option, RenderContext, Rendered, VolumeType


def _is_volume_type(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, VolumeType) and bool(obj.name)


@functools.cache
def volume_types() -> Registry[type[VolumeType]]:
    """Registry of installed volume types (built-ins are declared as entry points too).

    One per process: scanning installed distributions for entry points is slow (milliseconds),
    and plugins are loaded once.
    """
    return Registry(GROUPS["volumes"], "volume type", _is_volume_type)


__all__ = ["Option", "RenderContext", "Rendered", "VolumeType", "volume_types"]
