"""Small pure helpers of the LDAP IdP: attribute values, filter templates."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping

import ldap3

_FILTER_FIELD = re.compile(r"\{([^}]*)\}")


def close(conn: ldap3.Connection) -> None:
    with contextlib.suppress(Exception):
        conn.unbind()


def first(value: object) -> str | None:
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if value is None or value == "":
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def to_int(value: object) -> int | None:
    text = first(value)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def parent(dn: str) -> str:
    return dn.split(",", 1)[1] if "," in dn else dn


def fill(template: object, values: Mapping[str, str]) -> str:
    return _FILTER_FIELD.sub(lambda m: values.get(m.group(1), m.group(0)), str(template))


def filter_problem(value: str, fields: set[str], required: str = "") -> str | None:
    names = set(_FILTER_FIELD.findall(value))
    unknown = names - fields
    if unknown:
        known = ", ".join("{" + f + "}" for f in sorted(fields))
        return f"unknown placeholder '{{{sorted(unknown)[0]}}}'; use {known}"
    if required and required not in names:
        return f"must contain {{{required}}}"
    depth = 0
    for ch in value:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            break
    if depth != 0 or not value.startswith("("):
        return "must be a parenthesised LDAP filter"
    return None
