"""Volume types: the plugin interface, built-ins, and the entry-point registry."""

from __future__ import annotations

import functools

from afcore.options import Option
from afcore.registry import Registry
from afspawner.volumes.base import RenderContext, Rendered, VolumeType

GROUP = "afspawner.volumes"  # entry-point group of volume types


def _is_volume_type(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, VolumeType) and bool(obj.name)


@functools.cache
def volume_types() -> Registry[type[VolumeType]]:
    """Registry of installed volume types (built-ins are declared as entry points too).

    One per process: scanning installed distributions for entry points is slow (milliseconds),
    and plugins are loaded once.
    """
    return Registry(GROUP, "volume type", _is_volume_type)


__all__ = ["GROUP", "Option", "RenderContext", "Rendered", "VolumeType", "volume_types"]
