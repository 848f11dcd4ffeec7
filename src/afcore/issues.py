"""Configuration problems with the path of their key, collected all at once.

Both packages walk untrusted configuration (a facility file, the authenticator's traits) with
one :class:`Checker`, which records every :class:`ConfigIssue` instead of stopping at the
first; the caller raises :class:`ConfigError` listing them all, e.g.
``flavors[3].gpu.class: unknown GPU class 'v100'; defined: a100-3g.20gb, t4``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from afcore.quantity import QuantityError

_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(ValueError):
    """Configuration is invalid; ``issues`` lists every problem found.

    ``source`` names what was checked (a file path, ``AFAuthenticator configuration``).
    """

    def __init__(self, issues: list[ConfigIssue], source: str = "configuration") -> None:
        self.issues = issues
        self.source = source
        lines = "\n".join(f"  - {i}" for i in issues)
        super().__init__(f"{source} has {len(issues)} error(s):\n{lines}")


def short(value: str, n: int = 60) -> str:
    """``value`` cut to ``n`` characters (plus ``...``) for an error message."""
    return value if len(value) <= n else value[:n] + "..."


def kind(value: object) -> str:
    """What ``value`` is, in the words of a YAML author (``a mapping``, ``a list``)."""
    if value is None:
        return "nothing (null)"
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }.get(type(value), type(value).__name__)


def join_path(path: str, key: str | int) -> str:
    """``idps[2]`` + ``client_id`` → ``idps[2].client_id``; ints become ``[n]``.

    A key that is not a plain name is quoted (and shortened), so a hostile key cannot make a
    message ambiguous.
    """
    if isinstance(key, int):
        return f"{path}[{key}]"
    shown = key if _PLAIN_KEY.match(key) else repr(short(key))
    return f"{path}.{shown}" if path else shown


class Checker:
    """Collects issues while walking untrusted data; each helper returns ``None`` on a problem."""

    def __init__(self) -> None:
        self.issues: list[ConfigIssue] = []

    def err(self, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(path, message))

    def extend(self, path: str, problems: Iterable[tuple[str, str]]) -> None:
        """Record ``(where, message)`` problems of a plugin's options under ``path``.

        ``where`` is a path relative to ``path`` as the plugin wrote it (``algorithms[1]``,
        ``authorize_params.state``); keys the user wrote are already quoted by
        :func:`afcore.options.check_options`.
        """
        for where, message in problems:
            self.err(f"{path}.{where}" if path else where, message)

    def mapping(
        self,
        value: object,
        path: str,
        allowed: set[str],
        required: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> dict[str, Any] | None:
        if not isinstance(value, Mapping):
            self.err(path, f"expected a mapping, got {kind(value)}")
            return None
        ok: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.err(path, f"keys must be strings, got {kind(key)} {str(key)[:40]!r}")
            elif key not in allowed:
                self.err(
                    join_path(path, key), f"unknown key; allowed: {', '.join(sorted(allowed))}"
                )
            else:
                ok[key] = item
        for key in sorted(required - set(ok)):
            if not any(isinstance(k, str) and k == key for k in value):
                self.err(join_path(path, key), "required")
        return ok

    def string(
        self, value: object, path: str, pattern: re.Pattern[str] | None = None, what: str = ""
    ) -> str | None:
        if not isinstance(value, str) or not value:
            self.err(path, f"expected a non-empty string, got {kind(value)}")
            return None
        if len(value) > 1024:
            self.err(path, f"too long ({len(value)} characters)")
            return None
        if pattern is not None and not pattern.match(value):
            self.err(path, f"'{short(value)}' is not a valid {what}")
            return None
        return value

    def strings(
        self, value: object, path: str, pattern: re.Pattern[str] | None = None, what: str = ""
    ) -> tuple[str, ...]:
        if not isinstance(value, list):
            self.err(path, f"expected a list, got {kind(value)}")
            return ()
        out = [self.string(v, f"{path}[{i}]", pattern, what) for i, v in enumerate(value)]
        return tuple(v for v in out if v is not None)

    def count(self, value: object, path: str, minimum: int = 0) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.err(path, f"expected a whole number, got {kind(value)}")
            return None
        if value < minimum or value > 1_000_000_000:
            self.err(path, f"must be between {minimum} and 1000000000; got {value}")
            return None
        return value

    def quantity(self, value: object, path: str, parse: Callable[[object], int]) -> int | None:
        try:
            return parse(value)
        except QuantityError as exc:
            self.err(path, str(exc))
            return None

    def boolean(self, value: object, path: str) -> bool:
        if not isinstance(value, bool):
            self.err(path, f"expected true or false, got {kind(value)}")
            return False
        return value
