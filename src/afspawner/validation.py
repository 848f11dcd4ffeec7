"""Generic helpers to walk untrusted configuration and collect every problem with its key path."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from afspawner.quantity import QuantityError


@dataclass(frozen=True)
class ConfigIssue:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class FacilityError(ValueError):
    """The facility file is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue], source: str = "facility") -> None:
        self.issues = issues
        self.source = source
        lines = "\n".join(f"  - {i}" for i in issues)
        super().__init__(f"{source} has {len(issues)} error(s):\n{lines}")


class Checker:
    """Collects issues while walking untrusted data."""

    def __init__(self) -> None:
        self.issues: list[ConfigIssue] = []

    def err(self, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(path, message))

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
                self.err(join(path, key), f"unknown key; allowed: {', '.join(sorted(allowed))}")
            else:
                ok[key] = item
        for key in sorted(required - set(ok)):
            if not any(isinstance(k, str) and k == key for k in value):
                self.err(join(path, key), "required")
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


def kind(value: object) -> str:
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


def short(value: str) -> str:
    return value if len(value) <= 60 else value[:60] + "..."


def join(path: str, key: str) -> str:
    shown = key if re.match(r"^[A-Za-z0-9_-]+$", key) else repr(short(key))
    return f"{path}.{shown}" if path else shown
