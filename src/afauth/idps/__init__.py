"""Identity-provider types: the plugin interface, built-ins, and the entry-point registry."""

from __future__ import annotations

import functools

from afauth.idps.base import IdentityProvider, PasswordIdP, RedirectIdP
from afcore.registry import Registry

GROUP = "afauth.idps"  # entry-point group of identity-provider types


def _is_idp_type(obj: object) -> bool:
    return (
        isinstance(obj, type) and issubclass(obj, PasswordIdP | RedirectIdP) and bool(obj.type_name)
    )


@functools.cache
def idp_types() -> Registry[type[IdentityProvider]]:
    """Registry of installed IdP types (built-ins are entry points too); one per process."""
    return Registry(GROUP, "identity provider type", _is_idp_type)


__all__ = ["GROUP", "IdentityProvider", "PasswordIdP", "RedirectIdP", "idp_types"]
