"""Identity-provider types: the plugin interface, built-ins, and the entry-point registry."""

from __future__ import annotations

from afauth.idps.base import IdentityProvider, PasswordIdP, RedirectIdP
from afspawner.registry import GROUPS, Registry


def _is_idp_type(obj: object) -> bool:
    return (
        isinstance(obj, type) and issubclass(obj, PasswordIdP | RedirectIdP) and bool(obj.type_name)
    )


def idp_types() -> Registry[type[IdentityProvider]]:
    """Registry of installed IdP types (built-ins are declared as entry points too)."""
    return Registry(GROUPS["idps"], "identity provider type", _is_idp_type)


__all__ = ["IdentityProvider", "PasswordIdP", "RedirectIdP", "idp_types"]
