"""Backend options declared once: a frozen settings dataclass whose fields carry their help.

A backend's settings class lists each option of ``c.AFSpawner.backend_options`` as a field:
its annotation is the type, its default the default, and :func:`option` adds the help text (and
choices, a lower bound, an environment variable for the default). From that one declaration,
:func:`settings_from` checks what the site configured (unknown keys, types, choices, bounds,
every message naming ``c.AFSpawner.backend_options.<key>``) and builds the settings, and
:func:`options_table` writes the Markdown table of docs/spawner.md (a unit test keeps the two
equal).

Supported annotations: ``str``, ``str | None``, ``bool``, ``float`` (an int or a float),
``Path`` (a string or path), ``Mapping[str, str]``.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

PREFIX = "c.AFSpawner.backend_options"
_KEY = "afspawner.option"
S = TypeVar("S")


@dataclass(frozen=True)
class OptionDoc:
    """What the settings dataclass says about one option besides its type and default."""

    help: str
    shown_default: str  # the default as the docs table shows it
    choices: tuple[str, ...] = ()
    positive: bool = False  # numbers: more than 0 (otherwise 0 or more)
    unit: str = ""  # numbers: what they count, e.g. "seconds"
    env: str | None = None  # when unset, the default comes from this variable if it is set


@dataclass(frozen=True)
class Declared:
    name: str
    kind: str  # str, optional-str, bool, number, path, labels
    default: Any
    doc: OptionDoc


def option(
    default: Any,
    help: str,
    *,
    shown: str | None = None,
    choices: tuple[str, ...] = (),
    positive: bool = False,
    unit: str = "",
    env: str | None = None,
) -> Any:
    """A settings field with its documentation (use as the field's default)."""
    doc = OptionDoc(
        help, shown if shown is not None else _show(default), choices, positive, unit, env
    )
    if isinstance(default, Mapping):
        frozen = dict(default)
        return dataclasses.field(default_factory=lambda: dict(frozen), metadata={_KEY: doc})
    return dataclasses.field(default=default, metadata={_KEY: doc})


def _show(default: Any) -> str:
    if default is None:
        return "none"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, float) and default.is_integer():
        return f"`{int(default)}`"
    if isinstance(default, Mapping):
        return "`{}`" if not default else f"`{dict(default)}`"
    return f"`{default}`"


def _kind(hint: Any) -> str:
    if hint is str:
        return "str"
    if hint is bool:
        return "bool"
    if hint is float:
        return "number"
    if hint is Path:
        return "path"
    if hint == (str | None) or hint == typing.Optional[str]:  # noqa: UP045
        return "optional-str"
    if typing.get_origin(hint) in (Mapping, dict) and typing.get_args(hint) == (str, str):
        return "labels"
    raise TypeError(f"unsupported option type {hint!r}")


def declared(cls: type[Any]) -> list[Declared]:
    """The options of a settings dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        doc = f.metadata.get(_KEY)
        if not isinstance(doc, OptionDoc):
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with option()")
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        found.append(Declared(f.name, _kind(hints[f.name]), default, doc))
    return found


_WHAT = {
    "str": "a string",
    "optional-str": "a string",
    "bool": "true or false",
    "number": "a number",
    "path": "a path",
    "labels": "a mapping of strings to strings",
}


def _problem(opt: Declared, value: object) -> str | None:
    kind, doc = opt.kind, opt.doc
    ok = {
        "str": isinstance(value, str),
        "optional-str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "path": isinstance(value, str | os.PathLike),
        "labels": isinstance(value, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()),
    }[kind]
    if not ok:
        return f"wrong type {type(value).__name__}; expected {_WHAT[kind]}"
    if kind in ("str", "optional-str", "path") and not str(value):
        return "must not be empty"
    if doc.choices and value not in doc.choices:
        return f"{', '.join(doc.choices[:-1])} or {doc.choices[-1]}; got '{str(value)[:40]}'"
    if kind == "number":
        assert isinstance(value, int | float)
        unit = doc.unit or "a number"
        if doc.positive and not value > 0:
            return f"{unit}, more than 0"
        if value < 0:
            return f"{unit}, 0 or more"
    return None


def _convert(kind: str, value: Any) -> Any:
    if kind == "number":
        return float(value)
    if kind == "path":
        return Path(value)
    if kind == "labels":
        return dict(value)
    return value


def settings_from(cls: type[S], options: Mapping[str, Any], backend: str) -> S:
    """``c.AFSpawner.backend_options`` → ``cls``; ValueError naming the first bad option."""
    opts = {o.name: o for o in declared(cls)}
    for key, value in options.items():
        if key not in opts:
            raise ValueError(
                f"{PREFIX}.{key}: unknown option of the {backend} backend; "
                f"allowed: {', '.join(sorted(opts))}"
            )
        problem = None if value is None else _problem(opts[key], value)
        if problem:
            raise ValueError(f"{PREFIX}.{key}: {problem}")
    values: dict[str, Any] = {}
    for name, opt in opts.items():
        if options.get(name) is not None:
            values[name] = _convert(opt.kind, options[name])
        elif opt.doc.env and os.environ.get(opt.doc.env):
            values[name] = _convert(opt.kind, os.environ[opt.doc.env])
    return cls(**values)


_TYPE_SHOWN = {
    "str": "string",
    "optional-str": "string",
    "bool": "bool",
    "number": "number",
    "path": "path",
    "labels": "mapping",
}


def options_table(cls: type[Any]) -> str:
    """The Markdown table of a settings class's options (key, type, default, meaning)."""
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for opt in declared(cls):
        kind = _TYPE_SHOWN[opt.kind]
        if opt.doc.choices:
            kind = " / ".join(f"`{c}`" for c in opt.doc.choices)
        elif opt.doc.unit:
            kind = f"{kind} ({opt.doc.unit})"
        rows.append(f"| `{opt.name}` | {kind} | {opt.doc.shown_default} | {opt.doc.help} |")
    return "\n".join(rows) + "\n"
