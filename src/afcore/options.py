"""Declarative plugin options, checked at hub start with key paths.

A plugin (volume type, IdP type, mapper) declares ``options: Mapping[str, Option]``;
:func:`check_options` returns every problem as ``(key, message)`` so the caller can report
``idps[2].client_id: required for an oidc IdP`` or ``volumes.ceph.claim: required for a cephfs
volume``. Secret options are never echoed back in messages.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from afcore.issues import join_path, short
from afcore.quantity import QuantityError, memory_bytes
from afcore.templates import PATH_FIELDS, template_problem

OptionKind = Literal[
    "str",  # non-empty string
    "secret",  # non-empty string, never shown in messages
    "url",  # http(s) URL; plain http only for loopback hosts
    "ldap-url",  # ldap:// or ldaps:// URL
    "bool",
    "int",  # non-negative integer
    "number",  # non-negative int or float
    "quantity",  # a Kubernetes memory quantity such as 10Gi
    "str-list",  # list of non-empty strings (a single string is accepted as a list of one)
    "url-list",
    "ldap-url-list",
    "mapping",  # a mapping with string keys; content checked by the plugin
    "enum",  # one of ``choices``
    "path",  # absolute file-system path, literal (no placeholders)
    "template-path",  # absolute path with placeholders from afcore.templates.PATH_FIELDS
    "str-or-mapping",  # list of strings or a mapping with string keys
]

MAX_STRING = 4096
_LISTS: Mapping[str, OptionKind] = {
    "str-list": "str",
    "url-list": "url",
    "ldap-url-list": "ldap-url",
}


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
        return f"'{short(value)}' is not a valid URL: {exc}"
    if any(c in value for c in " \t\r\n") or not host:
        return f"'{short(value)}' is not a valid URL"
    if parts.scheme in schemes:
        return None
    if "https" in schemes and parts.scheme == "http" and is_loopback_host(host):
        return None
    return f"'{short(value)}' must use {' or '.join(schemes)}"


def _check_list(name: str, value: object, item_kind: OptionKind) -> str | None:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not items:
        return f"{name} must be a non-empty list of strings"
    for i, item in enumerate(items):
        problem = check_value(f"{name}[{i}]", Option(item_kind), item)
        if problem:
            return problem
    return None


def _check_number(name: str, kind: OptionKind, value: object) -> str | None:
    numeric = isinstance(value, int) or (kind == "number" and isinstance(value, float))
    if isinstance(value, bool) or not numeric or not isinstance(value, int | float) or value < 0:
        what = "an integer" if kind == "int" else "a number"
        return f"{name} must be {what} ≥ 0"
    return None


def _check_string(name: str, opt: Option, value: str) -> str | None:
    kind = opt.kind
    if kind == "url":
        return url_problem(value)
    if kind == "ldap-url":
        return url_problem(value, schemes=("ldap", "ldaps"))
    if kind == "enum" and value not in opt.choices:
        return f"{name} must be one of {', '.join(opt.choices)}; got '{short(value)}'"
    if kind in ("path", "template-path") and not value.startswith("/"):
        return f"{name} must be an absolute path; got '{short(value)}'"
    if kind == "path" and ("{" in value or "}" in value):
        return f"{name} cannot use placeholders; got '{short(value)}'"
    if kind == "template-path":
        return template_problem(value, PATH_FIELDS)
    return None


def check_value(name: str, opt: Option, value: object) -> str | None:
    """Problem of one option value, or ``None``."""
    kind = opt.kind
    if kind == "bool":
        return None if isinstance(value, bool) else f"{name} must be true or false"
    if kind in ("int", "number"):
        return _check_number(name, kind, value)
    if kind == "quantity":
        try:
            memory_bytes(value)
        except QuantityError as exc:
            return f"{name}: {exc}"
        return None
    if kind == "mapping" or (kind == "str-or-mapping" and isinstance(value, Mapping)):
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            return f"{name} must be a mapping with string keys"
        return None
    if kind == "str-or-mapping":
        return _check_list(name, value, "str")
    if kind in _LISTS:
        return _check_list(name, value, _LISTS[kind])
    if not isinstance(value, str) or not value or len(value) > MAX_STRING:
        return f"{name} must be a non-empty string"
    if kind == "secret":
        return None
    return _check_string(name, opt, value)


def check_options(
    spec: Mapping[str, Option], options: Mapping[str, object], what: str
) -> list[tuple[str, str]]:
    """Every problem of ``options`` against ``spec`` as ``(key, message)``.

    ``what`` names the plugin in messages: ``an oidc IdP``, ``a cephfs volume``.
    """
    problems: list[tuple[str, str]] = []
    for key in options:
        if key not in spec:
            allowed = ", ".join(sorted(spec)) or "none"
            problems.append(
                (join_path("", str(key)), f"unknown option for {what}; allowed: {allowed}")
            )
    for key, opt in spec.items():
        if key not in options or options[key] is None:
            if opt.required:
                problems.append((key, f"required for {what}"))
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
