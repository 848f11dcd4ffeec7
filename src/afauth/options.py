"""Declarative options of IdP and mapper plugins, checked at hub start with key paths.

A plugin declares ``options: Mapping[str, Option]``; :func:`check_options` returns every
problem as ``(key, message)`` so the authenticator can report ``idps[2].client_id: required``.
Secret options are never echoed back in messages.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

OptionKind = Literal[
    "str",  # non-empty string
    "secret",  # non-empty string, never shown in messages
    "url",  # http(s) URL; plain http only for loopback hosts
    "ldap-url",  # ldap:// or ldaps:// URL
    "bool",
    "int",  # non-negative integer
    "number",  # non-negative int or float
    "str-list",  # list of non-empty strings (a single string is accepted as a list of one)
    "url-list",
    "ldap-url-list",
    "mapping",  # a mapping with string keys; content checked by the plugin
    "enum",  # one of ``choices``
    "path",  # absolute file-system path
    "str-or-mapping",  # list of strings or a mapping with string keys
]

NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
MAX_STRING = 4096


@dataclass(frozen=True)
class Option:
    kind: OptionKind
    required: bool = False
    choices: tuple[str, ...] = ()
    help: str = ""


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_problem(value: str, *, schemes: tuple[str, ...] = ("https",)) -> str | None:
    """Why ``value`` is not an acceptable URL, or ``None``.

    ``http`` is accepted only for loopback hosts (test beds, a local IdP in a demo).
    """
    try:
        parts = urlsplit(value)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"'{_short(value)}' is not a valid URL: {exc}"
    if any(c in value for c in " \t\r\n") or not host:
        return f"'{_short(value)}' is not a valid URL"
    if parts.scheme in schemes:
        return None
    if "https" in schemes and parts.scheme == "http" and is_loopback_host(host):
        return None
    return f"'{_short(value)}' must use {' or '.join(schemes)}"


def _short(value: str, n: int = 60) -> str:
    return value if len(value) <= n else value[: n - 3] + "..."


def _is_str(value: object) -> bool:
    return isinstance(value, str) and bool(value) and len(value) <= MAX_STRING


def _check_list(name: str, value: object, item_kind: OptionKind) -> str | None:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        return f"{name} must be a non-empty list of strings"
    for i, item in enumerate(items):
        problem = check_value(f"{name}[{i}]", Option(item_kind), item)
        if problem:
            return problem
    return None


def check_value(name: str, opt: Option, value: object) -> str | None:
    """Problem of one option value, or ``None``."""
    kind = opt.kind
    if kind == "bool":
        return None if isinstance(value, bool) else f"{name} must be true or false"
    if kind in ("int", "number"):
        numeric = isinstance(value, int) or (kind == "number" and isinstance(value, float))
        if (
            isinstance(value, bool)
            or not numeric
            or not isinstance(value, int | float)
            or value < 0
        ):
            what = "an integer" if kind == "int" else "a number"
            return f"{name} must be {what} ≥ 0"
        return None
    if kind == "mapping":
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            return f"{name} must be a mapping with string keys"
        return None
    if kind == "str-or-mapping":
        if isinstance(value, Mapping):
            return check_value(name, Option("mapping"), value)
        return _check_list(name, value, "str")
    if kind == "str-list":
        return _check_list(name, value, "str")
    if kind == "url-list":
        return _check_list(name, value, "url")
    if kind == "ldap-url-list":
        return _check_list(name, value, "ldap-url")
    if not _is_str(value):
        return f"{name} must be a non-empty string"
    assert isinstance(value, str)
    if kind == "secret":
        return None
    if kind == "url":
        return url_problem(value)
    if kind == "ldap-url":
        return url_problem(value, schemes=("ldap", "ldaps"))
    if kind == "enum" and value not in opt.choices:
        return f"{name} must be one of {', '.join(opt.choices)}; got '{_short(value)}'"
    if kind == "path" and not value.startswith("/"):
        return f"{name} must be an absolute path; got '{_short(value)}'"
    return None


def check_options(
    spec: Mapping[str, Option], options: Mapping[str, object], what: str
) -> list[tuple[str, str]]:
    """Every problem of ``options`` against ``spec`` as ``(key, message)``."""
    problems: list[tuple[str, str]] = []
    for key in options:
        if key not in spec:
            allowed = ", ".join(sorted(spec)) or "none"
            problems.append((str(key), f"unknown option for {what}; allowed: {allowed}"))
    for key, opt in spec.items():
        if key not in options or options[key] is None:
            if opt.required:
                problems.append((key, "required"))
            continue
        message = check_value(key, opt, options[key])
        if message:
            problems.append((key, message))
    return problems


def file_problem(path: str) -> str | None:
    """Why the file at ``path`` cannot be read at hub start, or ``None``."""
    if not os.path.isfile(path):
        return f"file {path} does not exist"
    if not os.access(path, os.R_OK):
        return f"file {path} is not readable by the hub"
    return None


def as_list(value: object) -> list[str]:
    """A validated ``str-list`` option as a list (a single string becomes a list of one)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    assert isinstance(value, list | tuple)
    return [str(v) for v in value]
