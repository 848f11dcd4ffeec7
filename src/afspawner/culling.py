"""Idle and lifetime limits per flavor / GPU class, and which servers to stop: pure.

The facility file may declare ``idle: {timeout: 8h, max_age: 12h}`` at the top level (the
default), in a GPU class and in a flavor. Each key is taken from the most specific level that
sets it: flavor, then the flavor's GPU class, then the default; ``never`` there lifts a limit a
less specific level sets. :func:`decide` turns the hub's activity records (``started``,
``last_activity`` of each running server) into the servers to stop, each with a reason the user
is shown; :mod:`afspawner.hubcull` reads the records and stops the servers through the hub.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from afcore.issues import Checker, kind
from afspawner.facility import Facility, IdleLimits

UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
MAX_DURATION = 366 * 86400.0
DURATION_HELP = "a duration like 30m, 8h, 1h30m or 2d (units d, h, m, s), or never"


def parse_duration(value: object) -> float:
    """``"8h"`` → 28800.0; ``"1h30m"`` → 5400.0; ``"never"`` → ``math.inf``.

    A unit is required (a bare ``8`` could mean seconds or hours); units appear at most once,
    largest first. Raises ValueError with a message for the facility file's author.
    """
    if value == "never":
        return math.inf
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected {DURATION_HELP}; got {kind(value)} {str(value)[:40]!r}")
    text = value.strip().replace(" ", "")
    pos, total, seen = 0, 0.0, ""
    for match in _PART.finditer(text):
        unit = match.group(2)
        if (
            match.start() != pos
            or unit in seen
            or (seen and "dhms".index(unit) < "dhms".index(seen[-1]))
        ):
            break
        seen += unit
        total += float(match.group(1)) * UNITS[unit]
        pos = match.end()
    if pos != len(text) or not seen:
        raise ValueError(f"expected {DURATION_HELP}; got {value[:40]!r}")
    if total < 1:
        raise ValueError(f"must be at least 1s; got {value[:40]!r}")
    if total > MAX_DURATION:
        raise ValueError(f"must be at most 366d; got {value[:40]!r}")
    return total


def idle_limits(c: Checker, raw: object, path: str) -> IdleLimits:
    """Check an ``idle`` mapping (``timeout``, ``max_age``) and record problems under ``path``."""
    data = c.mapping(raw, path, {"timeout", "max_age"})
    if data is None:
        return IdleLimits()
    found: dict[str, float] = {}
    for key in ("timeout", "max_age"):
        if key in data:
            try:
                found[key] = parse_duration(data[key])
            except ValueError as exc:
                c.err(f"{path}.{key}", str(exc))
    return IdleLimits(timeout=found.get("timeout"), max_age=found.get("max_age"))


def format_duration(seconds: float) -> str:
    """``7380`` → ``2h 3m``; the two largest units, for people."""
    left = max(0, round(seconds))
    parts: list[str] = []
    for unit, size in UNITS.items():
        if left >= size or (unit == "s" and not parts):
            parts.append(f"{left // size}{unit}")
            left %= size
    return " ".join(parts[:2])


@dataclass(frozen=True)
class Lifetime:
    """The limits that apply to one flavor's servers (``None``: no limit) and where each is set."""

    idle_timeout: float | None = None
    max_age: float | None = None
    idle_from: str = ""  # "NVIDIA T4 servers", for the user's message
    age_from: str = ""

    @property
    def unlimited(self) -> bool:
        return self.idle_timeout is None and self.max_age is None


def lifetime(fac: Facility, flavor_name: str | None) -> Lifetime:
    """Per key: the flavor's value, else its GPU class's, else the facility default's.

    An unknown flavor (removed from the file while its server ran) gets the default.
    """
    levels: list[tuple[str, IdleLimits]] = []
    flavor = fac.flavor(flavor_name) if flavor_name else None
    if flavor is not None:
        levels.append((f"{flavor.display} servers", flavor.idle))
        gpu = fac.gpu_classes.get(flavor.gpu.gpu_class) if flavor.gpu else None
        if gpu is not None:
            levels.append((f"{gpu.display} servers", gpu.idle))
    levels.append(("servers of this facility", fac.idle))

    def pick(get: Callable[[IdleLimits], float | None]) -> tuple[float | None, str]:
        for label, limits in levels:
            value = get(limits)
            if value is not None:
                return (None if math.isinf(value) else value), label
        return None, ""

    idle, idle_from = pick(lambda x: x.timeout)
    age, age_from = pick(lambda x: x.max_age)
    return Lifetime(idle, age, idle_from, age_from)


def has_limits(fac: Facility) -> bool:
    """Whether any server of the facility can ever be stopped for idleness or age."""
    return (
        any(not lifetime(fac, f.name).unlimited for f in fac.flavors)
        or not lifetime(fac, None).unlimited
    )


@dataclass(frozen=True)
class ServerActivity:
    """One server as the hub records it (``orm.Spawner``); naive datetimes are UTC."""

    username: str
    server_name: str
    flavor: str | None
    started: datetime | None  # None: not running (pending or stopped)
    last_activity: datetime | None


Reason = Literal["idle", "max_age"]


@dataclass(frozen=True)
class Cull:
    """A server to stop, and why."""

    username: str
    server_name: str
    reason: Reason
    elapsed: float  # seconds idle, or seconds since the start
    limit: float
    limit_from: str  # "NVIDIA T4 servers"

    @property
    def key(self) -> tuple[str, str]:
        return self.username, self.server_name

    def message(self, at: datetime) -> str:
        """What the user reads on the spawn page and the home page."""
        server = f"Your server '{self.server_name}'" if self.server_name else "Your server"
        when = _utc(at).strftime("%Y-%m-%d %H:%M UTC")
        if self.reason == "idle":
            why = (
                f"after {format_duration(self.elapsed)} without activity "
                f"(the limit for {self.limit_from} is {format_duration(self.limit)} idle)"
            )
        else:
            why = (
                f"after running for {format_duration(self.elapsed)} "
                f"(the limit for {self.limit_from} is {format_duration(self.limit)} in all)"
            )
        return f"{server} was stopped by the hub on {when} {why}. Your files are kept."


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _cull(server: ServerActivity, life: Lifetime, now: datetime) -> Cull | None:
    if server.started is None:
        return None
    started = _utc(server.started)
    # a server cannot have been idle for longer than it has run
    last = max(started, _utc(server.last_activity)) if server.last_activity else started
    due: list[tuple[float, int, Cull]] = []
    if life.max_age is not None and (age := (now - started).total_seconds()) >= life.max_age:
        cull = Cull(
            server.username, server.server_name, "max_age", age, life.max_age, life.age_from
        )
        due.append((started.timestamp() + life.max_age, 0, cull))
    if life.idle_timeout is not None:
        idle = (now - last).total_seconds()
        if idle >= life.idle_timeout:
            cull = Cull(
                server.username, server.server_name, "idle", idle, life.idle_timeout, life.idle_from
            )
            due.append((last.timestamp() + life.idle_timeout, 1, cull))
    # the limit that was reached first is the reason (max_age on a tie)
    return min(due, key=lambda d: (d[0], d[1]))[2] if due else None


def decide(
    servers: Iterable[ServerActivity],
    lifetime_of: Callable[[str | None], Lifetime],
    now: datetime,
) -> tuple[Cull, ...]:
    """The running servers past their flavor's idle timeout or maximum age, in input order."""
    at = _utc(now)
    out: list[Cull] = []
    for server in servers:
        cull = _cull(server, lifetime_of(server.flavor), at)
        if cull is not None:
            out.append(cull)
    return tuple(out)


# -- the notice shown to the user ------------------------------------------------------------

NOTICE_KEY = "af_stopped"  # key of the notice in the spawner's saved state


def notice(cull: Cull, at: datetime) -> dict[str, str]:
    """The notice kept in the spawner's state until its next start (plain JSON)."""
    return {"reason": cull.reason, "at": _utc(at).isoformat(), "message": cull.message(at)}


def notice_message(state: Mapping[str, object] | None) -> str | None:
    """The message of a saved notice, or None."""
    if not isinstance(state, Mapping):
        return None
    message = state.get("message")
    return message if isinstance(message, str) and message else None


def notice_html(state: Mapping[str, object] | None) -> str:
    """The notice as an HTML alert for the spawn page ('' when there is none)."""
    message = notice_message(state)
    if message is None:
        return ""
    return (
        f'<div class="alert alert-warning af-stopped" role="status">{html.escape(message)}</div>\n'
    )
