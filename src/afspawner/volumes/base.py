"""The volume-type plugin interface and declarative option checking.

A volume type declares its options; the facility loader validates each ``volumes`` entry
against them, so a typo in a site file is reported at hub start with its key path.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from afspawner.plan import VolumeMount
from afspawner.quantity import QuantityError, memory_bytes

OptionKind = Literal["str", "path", "template-path", "bool", "quantity", "enum"]

# Placeholders a templated path may use; values are escaped when the path is rendered.
TEMPLATE_FIELDS = frozenset({"username", "vo", "uid", "gid", "server_name"})


@dataclass(frozen=True)
class Option:
    kind: OptionKind
    required: bool = False
    choices: tuple[str, ...] = ()
    help: str = ""


def template_problem(value: str) -> str | None:
    """Why ``value`` is not a valid path template, or ``None`` when it is."""
    try:
        parts = list(string.Formatter().parse(value))
    except ValueError as exc:
        return f"'{value}' is not a valid template: {exc}"
    for _, field_name, spec, conversion in parts:
        if field_name is None:
            continue
        if field_name not in TEMPLATE_FIELDS:
            known = ", ".join("{" + f + "}" for f in sorted(TEMPLATE_FIELDS))
            return f"unknown placeholder '{{{field_name}}}' in '{value}'; use {known}"
        if spec or conversion:
            return f"placeholder '{{{field_name}}}' in '{value}' must not carry a format"
    return None


def _check_option(name: str, opt: Option, value: object) -> str | None:
    if opt.kind == "bool":
        return None if isinstance(value, bool) else f"{name} must be true or false"
    if opt.kind == "quantity":
        try:
            memory_bytes(value)
        except QuantityError as exc:
            return f"{name}: {exc}"
        return None
    if not isinstance(value, str) or not value:
        return f"{name} must be a non-empty string"
    if opt.kind == "enum" and value not in opt.choices:
        return f"{name} must be one of {', '.join(opt.choices)}; got '{value}'"
    if opt.kind in ("path", "template-path"):
        if not value.startswith("/"):
            return f"{name} must be an absolute path; got '{value}'"
        if opt.kind == "path" and ("{" in value or "}" in value):
            return f"{name} cannot use placeholders; got '{value}'"
        if opt.kind == "template-path":
            return template_problem(value)
    return None


class VolumeType:
    """Base class of volume-type plugins (entry-point group ``afspawner.volumes``).

    Subclasses set ``options`` and, in later releases, render manifests for a backend.
    ``forced_read_only`` types (CVMFS) are always mounted read-only.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[Mapping[str, Option]] = {}
    forced_read_only: ClassVar[bool] = False

    @classmethod
    def validate(cls, options: Mapping[str, object]) -> list[tuple[str, str]]:
        """Problems as ``(option key, message)``; empty when ``options`` are valid."""
        problems: list[tuple[str, str]] = []
        for key in options:
            if key not in cls.options:
                allowed = ", ".join(sorted(cls.options)) or "none"
                problems.append(
                    (key, f"unknown option for a {cls.name} volume; allowed: {allowed}")
                )
        for key, opt in cls.options.items():
            if key not in options:
                if opt.required:
                    problems.append((key, f"required for a {cls.name} volume"))
                continue
            message = _check_option(key, opt, options[key])
            if message:
                problems.append((key, message))
        problems.extend(cls.check_combination(options))
        return problems

    @classmethod
    def check_combination(cls, options: Mapping[str, object]) -> list[tuple[str, str]]:
        """Cross-option rules; override in subclasses."""
        return []

    @classmethod
    def render(cls, volume: VolumeMount, ctx: RenderContext) -> Rendered:
        """Kubernetes volume + mount for ``volume``; every type used on Kubernetes overrides it."""
        raise NotImplementedError(f"volume type '{cls.name}' cannot be used on Kubernetes")


@dataclass(frozen=True)
class RenderContext:
    """What a volume type may use to render: object names of this server."""

    namespace: str
    pod_name: str
    home_claim: str


@dataclass(frozen=True)
class Rendered:
    """Pod volume and container mount (plain Kubernetes JSON), plus claims to ensure."""

    volume: dict[str, Any]
    mount: dict[str, Any]
    claims: tuple[dict[str, Any], ...] = ()
