"""``{placeholder}`` templates: one parser for volume paths, mapping rules and role names.

Templates are checked once (at hub start) with :func:`template_problem` and filled later with
:func:`fill`, which passes each value through an ``escape`` function (paths escape every value
into one path component).
"""

from __future__ import annotations

import string
from collections.abc import Callable, Collection, Mapping

# Placeholders a server path template (volume ``mount``, ``sub_path``...) may use.
PATH_FIELDS = frozenset({"username", "vo", "uid", "gid", "server_name"})


class TemplateError(ValueError):
    """A template cannot be parsed or uses a placeholder it may not use."""


def _parse(template: str) -> list[tuple[str, str | None, str | None, str | None]]:
    try:
        return list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"'{template}' is not a valid template: {exc}") from None


def placeholders(template: str, allowed: Collection[str] | None = None) -> list[str]:
    """Names of the placeholders of ``template``, in order, or :class:`TemplateError`.

    A placeholder must be a simple name without format spec or conversion; with ``allowed``,
    it must also be one of those names.
    """
    names: list[str] = []
    for _, name, spec, conversion in _parse(template):
        if name is None:
            continue
        if allowed is not None and name not in allowed:
            known = ", ".join("{" + f + "}" for f in sorted(allowed))
            raise TemplateError(f"unknown placeholder '{{{name}}}' in '{template}'; use {known}")
        if not name.isidentifier():
            raise TemplateError(f"placeholder '{{{name}}}' in '{template}' must be a simple name")
        if spec or conversion:
            raise TemplateError(f"placeholder '{{{name}}}' in '{template}' must not carry a format")
        names.append(name)
    return names


def template_problem(template: str, allowed: Collection[str] | None = None) -> str | None:
    """Why ``template`` is not valid (see :func:`placeholders`), or ``None``."""
    try:
        placeholders(template, allowed)
    except TemplateError as exc:
        return str(exc)
    return None


def fill(
    template: str, values: Mapping[str, str], escape: Callable[[str], str] = lambda v: v
) -> str:
    """``template`` with every placeholder replaced by ``escape(values[name])``.

    The template must have been checked; a placeholder missing from ``values`` is a KeyError.
    """
    out: list[str] = []
    for literal, name, _, _ in _parse(template):
        out.append(literal)
        if name is not None:
            out.append(escape(values[name]))
    return "".join(out)
