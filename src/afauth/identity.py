"""Who a user is, as established by an identity provider; plain frozen data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class Tokens:
    """OAuth tokens of an OIDC login (never logged; ``repr`` hides them)."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None


@dataclass(frozen=True)
class Identity:
    """A person as one IdP knows them.

    ``(idp, subject)`` is the stable key a hub user is bound to; ``username`` is the
    normalised hub name derived from a stable identifier of that IdP.

    IdPs fill ``idp_groups`` with the IdP's own group names (LDAP group ``cn``\\ s, the
    values of an OIDC groups claim) and leave ``groups`` and ``vos`` empty; the mapping
    step (:mod:`afauth.mapping`) turns claims into hub ``groups`` and ``vos`` and the
    authenticator stores the result with :func:`dataclasses.replace`.
    """

    idp: str
    subject: str
    username: str
    email: str | None = None
    email_verified: bool = False
    uid: int | None = None
    gid: int | None = None
    groups: tuple[str, ...] = ()
    vos: tuple[str, ...] = ()
    claims: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    tokens: Tokens | None = None
    idp_groups: tuple[str, ...] = ()
    supplemental_gids: tuple[int, ...] = ()
    home: str | None = None
    display_name: str | None = None
    #: a password login's Kerberos ticket (auth_state ``kerberos``, see afauth.kerberos)
    kerberos: Mapping[str, object] | None = field(default=None, repr=False)
