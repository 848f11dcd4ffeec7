"""The Fermilab-like directory the test bed serves (base ``dc=fnal,dc=gov``), and its LDIF.

::

    ou=People    inetOrgPerson (+ posixAccount for everyone but ``vera``), {SSHA} passwords
    ou=Groups    posixGroup with memberUid: cms 5063, us_cms 5064, dune 9010
                 groupOfNames with member DNs: eaf-users, gpu-approved, eaf-admins
    ou=Services  cn=eaf-hub, the read-only service account the hub binds as

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

__all__ = [
    "ADMIN_DN",
    "ADMIN_PASSWORD",
    "BASE_DN",
    "GROUPS",
    "GROUPS_DN",
    "PEOPLE_DN",
    "SERVICES_DN",
    "SERVICE_DN",
    "SERVICE_PASSWORD",
    "USERS",
    "LDAPGroup",
    "LDAPUser",
    "escape_dn_value",
    "ssha",
    "tree_ldif",
]

BASE_DN = "dc=fnal,dc=gov"
PEOPLE_DN = f"ou=People,{BASE_DN}"
GROUPS_DN = f"ou=Groups,{BASE_DN}"
SERVICES_DN = f"ou=Services,{BASE_DN}"
SERVICE_DN = f"cn=eaf-hub,{SERVICES_DN}"
SERVICE_PASSWORD = "eaf-hub-service-password"
ADMIN_DN = f"cn=admin,{BASE_DN}"  # slapd rootdn: may write, bypasses ACLs
ADMIN_PASSWORD = "fnal-directory-admin"


@dataclass(frozen=True)
class LDAPUser:
    """A person in ``ou=People``. ``uid_number is None`` means a plain inetOrgPerson (no POSIX)."""

    uid: str
    cn: str
    sn: str
    given_name: str
    password: str
    uid_number: int | None = None
    gid_number: int | None = None
    login_shell: str = "/bin/bash"
    posix_groups: tuple[str, ...] = ()  # posixGroup cn's listing this uid in memberUid
    groups: tuple[str, ...] = ()  # groupOfNames cn's listing this user's DN in member

    @property
    def dn(self) -> str:
        return f"uid={escape_dn_value(self.uid)},{PEOPLE_DN}"

    @property
    def mail(self) -> str:
        return f"{self.uid.replace(chr(39), '').replace('+', '.')}@fnal.gov"

    @property
    def home_directory(self) -> str | None:
        return None if self.uid_number is None else f"/home/{self.uid}"

    @property
    def is_posix(self) -> bool:
        return self.uid_number is not None


@dataclass(frozen=True)
class LDAPGroup:
    cn: str
    kind: Literal["posixGroup", "groupOfNames"]
    description: str
    gid_number: int | None = None
    members: tuple[str, ...] = field(default=())  # uids, filled from USERS

    @property
    def dn(self) -> str:
        return f"cn={escape_dn_value(self.cn)},{GROUPS_DN}"


_USERS: tuple[LDAPUser, ...] = (
    # a CMS user (US CMS)
    LDAPUser("alice", "Alice Anderson", "Anderson", "Alice", "alice-password", 50001, 5063,
             posix_groups=("cms", "us_cms"), groups=("eaf-users",)),
    # a DUNE user
    LDAPUser("bob", "Bob Brown", "Brown", "Bob", "bob-password", 50002, 9010,
             posix_groups=("dune",), groups=("eaf-users",)),
    # in two experiments; non-ASCII password (sent as UTF-8)
    LDAPUser("carol", "Carol Chen", "Chen", "Carol", "carol-pässwörd", 50003, 5063,
             posix_groups=("cms", "dune"), groups=("eaf-users",)),
    # approved for GPUs
    LDAPUser("dave", "Dave Davis", "Davis", "Dave", "dave-password", 50004, 5063,
             posix_groups=("cms", "us_cms"), groups=("eaf-users", "gpu-approved")),
    # facility admin
    LDAPUser("erin", "Erin Evans", "Evans", "Erin", "erin-password", 50005, 9010,
             login_shell="/bin/zsh", posix_groups=("dune",), groups=("eaf-users", "eaf-admins")),
    # apostrophe in uid; comma and parentheses in cn (escape when a DN or filter is built from it)
    LDAPUser("o'brien", "O'Brien, Patrick (Pat)", "O'Brien", "Patrick", "obrien-password",
             50006, 5063, posix_groups=("cms",), groups=("eaf-users",)),
    # '+' in uid: the DN is uid=pat\+ops,ou=People,... (unescaped it would be a multi-valued RDN)
    LDAPUser("pat+ops", "Pat Ops", "Ops", "Pat", "patops-password", 50007, 9010,
             posix_groups=("dune",), groups=("eaf-users",)),
    # allowed to use the facility, but no POSIX identity (no uidNumber/gidNumber/home)
    LDAPUser("vera", "Vera Visitor", "Visitor", "Vera", "vera-password",
             groups=("eaf-users",)),
    # a POSIX CMS account that is not in eaf-users
    LDAPUser("nina", "Nina Nobel", "Nobel", "Nina", "nina-password", 50009, 5063,
             posix_groups=("cms",)),
)  # fmt: skip

_GROUPS: tuple[LDAPGroup, ...] = (
    LDAPGroup("cms", "posixGroup", "CMS experiment", 5063),
    LDAPGroup("us_cms", "posixGroup", "US CMS collaborators", 5064),
    LDAPGroup("dune", "posixGroup", "DUNE experiment", 9010),
    LDAPGroup("eaf-users", "groupOfNames", "May use the Elastic Analysis Facility"),
    LDAPGroup("gpu-approved", "groupOfNames", "Approved for GPU notebooks"),
    LDAPGroup("eaf-admins", "groupOfNames", "EAF administrators"),
)

USERS: Mapping[str, LDAPUser] = MappingProxyType({u.uid: u for u in _USERS})
GROUPS: Mapping[str, LDAPGroup] = MappingProxyType(
    {
        g.cn: LDAPGroup(
            g.cn,
            g.kind,
            g.description,
            g.gid_number,
            tuple(
                u.uid
                for u in _USERS
                if g.cn in (u.posix_groups if g.kind == "posixGroup" else u.groups)
            ),
        )
        for g in _GROUPS
    }
)


def escape_dn_value(value: str) -> str:
    """Escape an attribute value for use in a string DN (RFC 4514, section 2.4)."""
    out = []
    for i, ch in enumerate(value):
        if ch in ',+"\\<>;=' or (i == 0 and ch in "# ") or (i == len(value) - 1 and ch == " "):
            out.append("\\" + ch)
        elif ch == "\0":
            out.append("\\00")
        else:
            out.append(ch)
    return "".join(out)


def ssha(password: str, salt: bytes | None = None) -> str:
    """``{SSHA}`` userPassword value, as ``slappasswd -h {SSHA}`` produces."""
    salt = os.urandom(8) if salt is None else salt
    digest = hashlib.sha1(password.encode() + salt, usedforsecurity=False).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def _ldif_line(attr: str, value: str) -> str:
    """``attr: value``, or ``attr:: base64`` when the value is not an LDIF SAFE-STRING."""
    safe = (
        value.isascii()
        and not any(c in value for c in "\0\r\n")
        and not (value[:1] in (" ", ":", "<") or value.endswith(" "))
    )
    if safe:
        return f"{attr}: {value}"
    return f"{attr}:: {base64.b64encode(value.encode()).decode('ascii')}"


def _ldif_entry(dn: str, attrs: list[tuple[str, str]]) -> str:
    return "\n".join([_ldif_line("dn", dn), *(_ldif_line(a, v) for a, v in attrs)]) + "\n"


def tree_ldif() -> str:
    """The whole tree as LDIF, for ``slapadd``."""
    entries = [
        _ldif_entry(BASE_DN, [("objectClass", "top"), ("objectClass", "dcObject"),
                              ("objectClass", "organization"), ("dc", "fnal"),
                              ("o", "Fermi National Accelerator Laboratory")]),
        *(
            _ldif_entry(dn, [("objectClass", "organizationalUnit"), ("ou", dn[3:].split(",")[0])])
            for dn in (PEOPLE_DN, GROUPS_DN, SERVICES_DN)
        ),
        _ldif_entry(SERVICE_DN, [("objectClass", "applicationProcess"),
                                 ("objectClass", "simpleSecurityObject"), ("cn", "eaf-hub"),
                                 ("description", "JupyterHub EAF read-only bind account"),
                                 ("userPassword", ssha(SERVICE_PASSWORD))]),
    ]  # fmt: skip
    for u in USERS.values():
        attrs = [("objectClass", "inetOrgPerson")]
        if u.is_posix:
            attrs.append(("objectClass", "posixAccount"))
        attrs += [("uid", u.uid), ("cn", u.cn), ("sn", u.sn), ("givenName", u.given_name),
                  ("mail", u.mail), ("userPassword", ssha(u.password))]  # fmt: skip
        if u.is_posix:
            attrs += [
                ("uidNumber", str(u.uid_number)),
                ("gidNumber", str(u.gid_number)),
                ("homeDirectory", str(u.home_directory)),
                ("loginShell", u.login_shell),
            ]
        entries.append(_ldif_entry(u.dn, attrs))
    for g in GROUPS.values():
        attrs = [("objectClass", g.kind), ("cn", g.cn), ("description", g.description)]
        if g.kind == "posixGroup":
            attrs += [("gidNumber", str(g.gid_number)), *(("memberUid", m) for m in g.members)]
        else:
            attrs += [("member", USERS[m].dn) for m in g.members]
        entries.append(_ldif_entry(g.dn, attrs))
    return "\n".join(entries)
